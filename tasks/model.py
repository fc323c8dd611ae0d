"""Stage 3, Model Setup: the config with overwrites, instantiated on the meta device (no weights).

Every weight the config expects is checked by name and shape against the checkpoint's
safetensors headers (the same preflight check the standalone worker runs before loading).
"""

from __future__ import annotations

from prefect import get_run_logger

from streamvln_model.config.arguments import Arguments, resolve_flags
from streamvln_model.config.preflight import PreflightError, checkpoint_report
from streamvln_model.model.builder import meta_model, model_config
from tasks.caching import planning_task, side_effect_task
from tasks.parameters import TrainRequest
from tasks.types import ModelPlan, ResolvedArguments


def parsed(arguments: ResolvedArguments) -> Arguments:
    """The three dataclasses again, from the resolved flags (the one resolver every path uses)."""
    return resolve_flags(arguments.flags)


def checkpoint_paths(inputs: dict) -> list[str]:
    return [inputs["arguments"].model["model_name_or_path"]]


@planning_task("model-setup", reads=checkpoint_paths)
def plan_model(arguments: ResolvedArguments) -> ModelPlan:
    resolved = parsed(arguments)
    problems, unexpected = checkpoint_report(resolved)
    if problems:
        raise PreflightError(problems)
    config = model_config(*resolved.as_tuple())
    total = sum(p.numel() for p in meta_model(config).parameters())
    get_run_logger().info("model %s: %s parameters", resolved.model.model_name_or_path, f"{total:,}")
    return ModelPlan(
        checkpoint=resolved.model.model_name_or_path,
        config=config.to_dict(),
        total_parameters=total,
        unexpected_weights=unexpected,
    )


@side_effect_task("fetch-model")
def fetch_model(request: TrainRequest) -> tuple[TrainRequest, str | None]:
    """A registered model as the starting checkpoint: `models:/<name>@<alias>` (or `/<version>`)
    is downloaded once into the local cache and the request points at that folder.

    Returns the request and the source (the URI, with the version the alias named at this time),
    which the run records as lineage. (The flow calls it only for a registry URI.)
    """
    import mlflow

    from streamvln_model.registry.models import (
        is_registry_uri,
        parse_model_uri,
        resolve_model,
        resolve_version,
        version_uri,
    )

    uri = request.model_name_or_path
    if not is_registry_uri(uri):
        return request, None
    ref = parse_model_uri(uri)
    source = version_uri(ref.name, resolve_version(mlflow.MlflowClient(), ref))  # the alias's version now
    local = resolve_model(source)
    get_run_logger().info("model %s (%s) from the local cache %s", uri, source, local)
    return request.model_copy(update={"model_name_or_path": local}), source
