"""Stage 2, Initialize Training Environment: device, world size, dtype, DeepSpeed config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import get_run_logger

from streamvln_model.data.errors import DataValidationError
from tasks.caching import planning_task
from tasks.parameters import LaunchConfig
from tasks.types import EnvironmentPlan, ResolvedArguments


def _deepspeed_paths(inputs: dict) -> list[str]:
    launch = inputs["launch"]
    return [launch.deepspeed] if launch.deepspeed else []


@planning_task("initialize-environment", reads=_deepspeed_paths)
def setup_environment(arguments: ResolvedArguments, launch: LaunchConfig) -> EnvironmentPlan:
    """On a CPU-only host torchrun needs `--use_cpu --ddp_backend gloo` for real DDP (STACK.md)."""
    device = launch.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    training = arguments.training
    if device == "cpu" and (training.get("bf16") or training.get("fp16")):
        get_run_logger().warning("bf16/fp16 on CPU: kept as requested; expect slow kernels")
    worker_flags = {"use_cpu": True, "ddp_backend": "gloo"} if device == "cpu" else {}
    deepspeed_config = None
    if launch.deepspeed:
        path = Path(launch.deepspeed)
        try:
            deepspeed_config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataValidationError(
                [f"{path}: DeepSpeed config unreadable ({err}). Fix: pass a JSON file"]
            ) from err
        worker_flags["deepspeed"] = str(path.resolve())
    dtype = "bfloat16" if training.get("bf16") else "float16" if training.get("fp16") else "float32"
    return EnvironmentPlan(
        device=device,
        world_size=launch.nproc_per_node * launch.nnodes,
        nproc_per_node=launch.nproc_per_node,
        nnodes=launch.nnodes,
        compute_dtype=dtype,
        worker_flags=worker_flags,
        deepspeed_config=deepspeed_config,
    )
