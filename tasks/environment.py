"""Stage 2, Initialize Training Environment: device, world size, dtype, substitutions, sharding.

The launch machine's checks are preflight's (`machine_plan`): a device that is not there or a
process count the devices cannot hold fail here; published defaults the machine cannot honour
(flash_attention_2 without flash-attn on CUDA, TF32 without an Ampere GPU) are substituted and
logged once. The sharding strategy (`LaunchConfig.deepspeed`, or `--deepspeed` / `--fsdp` in the
request) is checked here too (streamvln_model/config/strategies.py), and its config files reach the
workers as absolute paths.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from streamvln_model.config.arguments import Arguments
from streamvln_model.config.preflight import PreflightError, machine_plan
from streamvln_model.config.strategies import read_strategy, strategy_problems
from streamvln_model.model.precision import weight_dtype
from tasks.caching import planning_task
from tasks.model import parsed
from tasks.parameters import LaunchConfig
from tasks.types import EnvironmentPlan, ResolvedArguments


def _strategy_paths(inputs: dict) -> list[str]:
    """The DeepSpeed / FSDP config files this stage reads: their content is part of the cache key."""
    flags = inputs["arguments"].flags
    paths = [inputs["launch"].deepspeed, flags.get("deepspeed"), flags.get("fsdp_config")]
    return [path for path in paths if isinstance(path, str) and path]


def _config_file_flags(resolved: Arguments, flags: dict, launch: LaunchConfig) -> dict[str, str]:
    """Config files the workers read, as absolute paths (a worker's working directory, or node, may
    differ from the flow's). The launch's DeepSpeed config wins over one in the request."""
    files = {}
    deepspeed = launch.deepspeed or flags.get("deepspeed")
    if isinstance(deepspeed, str) and deepspeed:
        files["deepspeed"] = str(Path(deepspeed).resolve())
    if resolved.training.fsdp and isinstance(flags.get("fsdp_config"), str):
        files["fsdp_config"] = str(Path(flags["fsdp_config"]).resolve())
    return files


@planning_task("initialize-environment", reads=_strategy_paths)
def setup_environment(arguments: ResolvedArguments, launch: LaunchConfig) -> EnvironmentPlan:
    resolved = parsed(arguments)
    files = _config_file_flags(resolved, arguments.flags, launch)
    if launch.deepspeed:  # the run trains with it: preflight it like a --deepspeed flag
        resolved.training.deepspeed = files["deepspeed"]
    plan = machine_plan(resolved, launch.device, launch.nproc_per_node)
    strategy = read_strategy(resolved.training)
    deepspeed_config = None
    if launch.deepspeed:  # the request's own --deepspeed was checked with the arguments
        plan.problems += strategy_problems(resolved.training)
        deepspeed_config = strategy.config
    plan.worker_flags.update(files)
    if plan.problems:
        raise PreflightError(plan.problems)
    get_run_logger().info("sharding: %s", strategy.name)
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
