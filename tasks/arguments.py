"""Stage 1, Parse Arguments: the flow's form -> the three dataclasses -> worker flags."""

from __future__ import annotations

from streamvln_model.arguments import parser
from streamvln_model.builder import validate_arguments
from tasks.caching import planning_task
from tasks.parameters import TrainRequest
from tasks.types import ResolvedArguments


def _flag_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@planning_task("parse-arguments")
def resolve_arguments(request: TrainRequest) -> ResolvedArguments:
    """HfArgumentParser validates types and names exactly as the worker will; then semantic checks."""
    flags = request.flags()
    model_args, data_args, training_args = parser().parse_dict(flags, allow_extra_keys=False)
    validate_arguments(model_args, data_args, training_args)
    argv = [item for key, value in flags.items() for item in (f"--{key}", _flag_value(value))]
    return ResolvedArguments(
        flags=flags,
        argv=argv,
        model=vars(model_args).copy(),
        data=vars(data_args).copy(),
        training={k: v for k, v in training_args.to_dict().items()},
    )
