"""Stage 1, Parse Arguments: the flow's form -> the three dataclasses, checked by preflight.

The same `resolve_flags` and `argument_problems` the standalone worker and `streamvln train`
use, so a run triggered from the UI reports exactly the problems the command line would.
"""

from __future__ import annotations

from streamvln_model.config.arguments import as_data
from streamvln_model.config.preflight import PreflightError, argument_problems
from streamvln_model.config.secrets import split_secrets
from tasks.caching import planning_task
from tasks.parameters import TrainRequest, request_arguments
from tasks.types import ResolvedArguments


def resolve_request(request: TrainRequest) -> ResolvedArguments:
    """Resolve and check the request's flags; secrets stay out (they travel in the environment)."""
    arguments = request_arguments(request)
    problems = argument_problems(arguments)
    if problems:
        raise PreflightError(problems)
    return ResolvedArguments(flags=split_secrets(request.flags())[0], **as_data(arguments))


@planning_task("parse-arguments")
def resolve_arguments(request: TrainRequest) -> ResolvedArguments:
    return resolve_request(request)
