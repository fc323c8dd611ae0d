"""Stage 6, Gradient Configuration: which parts train, with parameter counts (meta device)."""

from __future__ import annotations

from prefect import get_run_logger, task

from streamvln_model.builder import meta_model
from streamvln_model.configuration import StreamVLNConfig
from streamvln_model.freezing import apply_freezing, trainable_parts
from tasks.caching import PLAN_CACHE_EXPIRATION, planning_policy
from tasks.model import parsed
from tasks.types import GradientPlan, ModelPlan, ResolvedArguments


@task(
    name="gradient-configuration",
    cache_policy=planning_policy(),
    persist_result=True,
    cache_expiration=PLAN_CACHE_EXPIRATION,
)
def plan_gradients(arguments: ResolvedArguments, model_plan: ModelPlan) -> GradientPlan:
    model_args, _, training_args = parsed(arguments)
    parts = trainable_parts(model_args, training_args)
    counts = apply_freezing(meta_model(StreamVLNConfig.from_dict(model_plan.config)), parts)
    get_run_logger().info(
        "trainable %s of %s parameters (%s)", f"{counts['trainable']:,}", f"{counts['total']:,}", parts
    )
    return GradientPlan(parts=list(parts), counts=counts)
