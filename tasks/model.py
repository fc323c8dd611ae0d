"""Stage 3, Model Setup: the config with overwrites, instantiated on the meta device (no weights)."""

from __future__ import annotations

from types import SimpleNamespace

from prefect import get_run_logger

from streamvln_model.arguments import DataArguments, ModelArguments
from streamvln_model.builder import check_checkpoint, meta_model, model_config
from tasks.caching import planning_task
from tasks.types import ModelPlan, ResolvedArguments


def parsed(arguments: ResolvedArguments) -> tuple[ModelArguments, DataArguments, SimpleNamespace]:
    """The dataclasses again from the resolved dicts; training as a plain namespace (no device setup)."""
    return (
        ModelArguments(**arguments.model),
        DataArguments(**arguments.data),
        SimpleNamespace(**arguments.training),
    )


def checkpoint_paths(inputs: dict) -> list[str]:
    return [inputs["arguments"].model["model_name_or_path"]]


@planning_task("model-setup", reads=checkpoint_paths)
def plan_model(arguments: ResolvedArguments) -> ModelPlan:
    model_args, data_args, training_args = parsed(arguments)
    config = model_config(model_args, data_args, training_args)
    model = meta_model(config)
    keys = check_checkpoint(model_args.model_name_or_path, model)
    total = sum(p.numel() for p in model.parameters())
    get_run_logger().info("model %s: %s parameters", model_args.model_name_or_path, f"{total:,}")
    return ModelPlan(
        checkpoint=model_args.model_name_or_path,
        config=config.to_dict(),
        total_parameters=total,
        unexpected_weights=keys["unexpected"],
    )
