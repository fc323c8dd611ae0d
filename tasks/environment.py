"""Stage 2, Initialize Training Environment: device, world size, dtype, substitutions, DeepSpeed.

The launch machine's checks are preflight's (`machine_plan`): a device that is not there or a
process count the devices cannot hold fail here; published defaults the machine cannot honour
(flash_attention_2 without flash-attn on CUDA, TF32 without an Ampere GPU) are substituted and
logged once.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger

from streamvln_model.precision import weight_dtype
from streamvln_model.preflight import PreflightError, machine_plan
from tasks.caching import planning_task
from tasks.model import parsed
from tasks.parameters import LaunchConfig
from tasks.types import EnvironmentPlan, ResolvedArguments


def _deepspeed_paths(inputs: dict) -> list[str]:
    launch = inputs["launch"]
    return [launch.deepspeed] if launch.deepspeed else []


@planning_task("initialize-environment", reads=_deepspeed_paths)
def setup_environment(arguments: ResolvedArguments, launch: LaunchConfig) -> EnvironmentPlan:
    resolved = parsed(arguments)
    plan = machine_plan(resolved, launch.device, launch.nproc_per_node)
    deepspeed_config = None
    if launch.deepspeed:
        path = Path(launch.deepspeed)
        try:
            deepspeed_config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            plan.problems.append(f"{path}: DeepSpeed config unreadable ({err}). Fix: pass a JSON file")
        plan.worker_flags["deepspeed"] = str(path.resolve())
    if plan.problems:
        raise PreflightError(plan.problems)
    for line in plan.substitutions:
        get_run_logger().warning("substitution: %s", line)
    return EnvironmentPlan(
        device=plan.device,
        world_size=launch.nproc_per_node * launch.nnodes,
        nproc_per_node=launch.nproc_per_node,
        nnodes=launch.nnodes,
        compute_dtype=str(weight_dtype(resolved.training)).removeprefix("torch."),
        worker_flags=plan.worker_flags,
        substitutions=plan.substitutions,
        deepspeed_config=deepspeed_config,
    )
