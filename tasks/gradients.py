"""Stage 6, Gradient Configuration: which parts train, with parameter counts (meta device)."""

from __future__ import annotations

from prefect import get_run_logger

from streamvln_model.builder import meta_model
from streamvln_model.configuration import StreamVLNConfig
from streamvln_model.freezing import apply_freezing, trainable_parts
from tasks.caching import planning_task
from tasks.model import parsed
from tasks.types import GradientPlan, ModelPlan, ResolvedArguments


@planning_task("gradient-configuration")
def plan_gradients(arguments: ResolvedArguments, model_plan: ModelPlan) -> GradientPlan:
    model_args, _, training_args = parsed(arguments)
    parts = trainable_parts(model_args, training_args)
    counts = apply_freezing(meta_model(StreamVLNConfig.from_dict(model_plan.config)), parts)
    get_run_logger().info(
        "trainable %s of %s parameters (%s)", f"{counts['trainable']:,}", f"{counts['total']:,}", parts
    )
    return GradientPlan(parts=list(parts), counts=counts)
