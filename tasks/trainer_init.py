"""Stage 8, Trainer Initialization: write plan.json and the worker command; detect checkpoints.

Not cached on purpose: it inspects `output_dir` for `checkpoint-*` folders to resume from, which
changes between runs of the same inputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import get_run_logger
from transformers.trainer_utils import get_last_checkpoint

from tasks.caching import side_effect_task
from tasks.parameters import LaunchConfig
from tasks.types import (
    DataPlan,
    EnvironmentPlan,
    GradientPlan,
    MemoryPlan,
    ModelPlan,
    ResolvedArguments,
    TokenizerPlan,
    TrainerPlan,
    VisionPlan,
)

PLAN_FILE = "plan.json"


def torchrun_command(launch: LaunchConfig, plan_path: Path) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={launch.nproc_per_node}"]
    if launch.nnodes > 1:
        if not launch.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port reachable from every node)")
        command += [
            f"--nnodes={launch.nnodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={launch.rdzv_endpoint}",
        ]
        command += [f"--rdzv_id={launch.rdzv_id or 'streamvln'}"]
    return [*command, "-m", "streamvln_model.train", "--plan", str(plan_path)]


@side_effect_task("trainer-initialization")
def init_trainer(
    arguments: ResolvedArguments,
    environment: EnvironmentPlan,
    model: ModelPlan,
    tokenizer: TokenizerPlan,
    vision: VisionPlan,
    gradients: GradientPlan,
    data: DataPlan,
    launch: LaunchConfig,
    memory: MemoryPlan | None = None,
) -> TrainerPlan:
    """plan.json = the run as data: the request's flags, the launch machine's flags, and the
    arguments the flags resolve to (the worker re-resolves them and checks they are equal)."""
    output_dir = Path(arguments.flags["output_dir"]).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    worker_flags = {**environment.worker_flags, "data_index": data.index_path, "output_dir": str(output_dir)}
    plan = {
        "flags": arguments.flags,  # what the request asked; worker_flags win where both name a flag
        "worker_flags": worker_flags,
        "arguments": {"model": arguments.model, "data": arguments.data, "training": arguments.training},
        "substitutions": environment.substitutions,
        "environment": environment.model_dump(),
        "model": {k: v for k, v in model.model_dump().items() if k != "config"},
        "tokenizer": tokenizer.model_dump(),
        "vision": vision.model_dump(),
        "gradients": gradients.model_dump(),
        "data": data.model_dump(),
        "memory": memory.model_dump() if memory else None,  # predicted per-GPU bytes (memory_plan.py)
    }
    plan_path = output_dir / PLAN_FILE
    partial = plan_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(plan, indent=2, default=str))
    partial.replace(plan_path)
    resume = get_last_checkpoint(str(output_dir))
    if resume:
        get_run_logger().info("will resume from %s", resume)
    return TrainerPlan(
        plan_path=str(plan_path),
        output_dir=str(output_dir),
        command=torchrun_command(launch, plan_path),
        resume_from=resume,
    )
