"""Stage 6, Gradient Configuration: which parts train, with parameter counts (meta device)."""

from __future__ import annotations

from prefect import get_run_logger

from streamvln_model.model.builder import meta_model
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.freezing import apply_freezing, freezing_plan, trained_parts
from streamvln_model.model.lora import planned_model
from tasks.caching import planning_task
from tasks.model import parsed
from tasks.types import GradientPlan, ModelPlan, ResolvedArguments


@planning_task("gradient-configuration")
def plan_gradients(arguments: ResolvedArguments, model_plan: ModelPlan) -> GradientPlan:
    model_args, _, training_args = parsed(arguments)
    plan = freezing_plan(model_args, training_args)
    # With --lora_enable the planned model has its LoRA layers (meta device), counted per part.
    model = planned_model(meta_model(StreamVLNConfig.from_dict(model_plan.config)), training_args)
    counts = apply_freezing(model, plan)
    parts = trained_parts(counts)
    get_run_logger().info(
        "trainable %s of %s parameters (%s; %s)",
        f"{counts['trainable']:,}",
        f"{counts['total']:,}",
        ", ".join(parts) or "nothing",
        plan.describe(),
    )
    return GradientPlan(parts=parts, counts=counts)
