"""Stage 6b, Memory Plan: per-GPU bytes of the run before anything loads, and the verdict.

Runs after Gradient Configuration (it needs the same freezing decision) on the meta-device
model: parameters, gradients, optimizer states, buffers and activations per GPU under the run's
strategy (the launch's DeepSpeed config or the flags), see streamvln_model/training/memory/. With
`--gpu_memory_gb` a run that cannot fit fails here, naming the cheapest change that fits, instead
of running out of memory minutes into a multi-node launch.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from streamvln_model.config.preflight import PreflightError
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.training.memory import GIB, MemoryReport, plan_memory
from tasks.caching import planning_task
from tasks.model import parsed
from tasks.types import EnvironmentPlan, MemoryPlan, ModelPlan, ResolvedArguments

ARTIFACT_KEY = "memory-plan"


def memory_result(report: MemoryReport) -> MemoryPlan:
    """The report as the stage's JSON result (what plan.json and MLflow carry)."""
    run, cheapest = report.run, report.cheapest_fit
    return MemoryPlan(
        strategy=run.label,
        world_size=run.world_size,
        sequence_length=run.sequence_length,
        gpu_memory_gb=report.gpu_memory_gb,
        usable_bytes=report.usable_bytes,
        peak_bytes=run.peak_bytes,
        fits=report.fits,
        cheapest_fit=cheapest.change if cheapest and report.fits is False else None,
        estimate=run.as_dict(),
        rows=report.rows(),
    )


def show_memory_plan(plan: MemoryPlan) -> None:
    """The plan as a table in the Prefect UI (called by the flow, so cache hits show it too)."""
    verdict = (
        "no GPU size given (--gpu_memory_gb): no verdict"
        if plan.fits is None
        else f"{'fits' if plan.fits else 'does NOT fit'} in {plan.gpu_memory_gb:g} GiB "
        f"({plan.usable_bytes / GIB:.1f} GiB usable)"
    )
    create_table_artifact(
        plan.rows,
        key=ARTIFACT_KEY,
        description=(
            f"Predicted per-GPU memory (GiB) on {plan.world_size} GPU(s), sequence {plan.sequence_length} "
            f"tokens: {plan.strategy} peaks at {plan.peak_bytes / GIB:.1f} GiB, {verdict}. "
            "Formulas: docs/PERFORMANCE.md"
        ),
    )


@planning_task("memory-plan")
def plan_run_memory(
    arguments: ResolvedArguments, environment: EnvironmentPlan, model_plan: ModelPlan
) -> MemoryPlan:
    report = plan_memory(
        parsed(arguments),
        environment.world_size,
        environment.deepspeed_config,
        config=StreamVLNConfig.from_dict(model_plan.config),
    )
    plan = memory_result(report)
    get_run_logger().info(
        "memory per GPU: %s peaks at %.1f GiB (%s)",
        report.run.label,
        plan.peak_bytes / GIB,
        report.run.breakdown(),
    )
    problem = report.problem()
    if problem:
        show_memory_plan(plan)  # the numbers behind the refusal, in the UI
        raise PreflightError([problem])
    return plan
