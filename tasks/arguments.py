"""Stage 1, Parse Arguments: the flow's form -> the three dataclasses, validated."""

from __future__ import annotations

from streamvln_model.arguments import parser
from streamvln_model.builder import validate_arguments
from tasks.caching import planning_task
from tasks.parameters import TrainRequest
from tasks.types import ResolvedArguments


@planning_task("parse-arguments")
def resolve_arguments(request: TrainRequest) -> ResolvedArguments:
    """HfArgumentParser validates types and names exactly as the worker will; then semantic checks."""
    flags = request.flags()
    model_args, data_args, training_args = parser().parse_dict(flags, allow_extra_keys=False)
    validate_arguments(model_args, data_args, training_args)
    return ResolvedArguments(
        flags=flags,
        model=vars(model_args).copy(),
        data=vars(data_args).copy(),
        training=training_args.to_dict(),
    )
