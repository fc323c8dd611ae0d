"""Stage 8, Trainer Initialization: write plan.json and the worker command; detect checkpoints.

Not cached on purpose: it inspects `output_dir` for `checkpoint-*` folders to resume from, which
changes between runs of the same inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger

from streamvln_model.checkpoint.staging import resume_checkpoint
from streamvln_model.files import write_text_atomically
from tasks.caching import side_effect_task
from tasks.parameters import LaunchConfig
from tasks.types import Plans, TrainerPlan

PLAN_FILE = "plan.json"


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The global step of a `checkpoint-N` folder (None for none)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else None


RDZV_PORT = 29500  # torchrun's default port, used with the first node of a Slurm allocation


def torchrun_command(launch: LaunchConfig, plan_path: Path) -> list[str]:
    """The command that starts the workers: torchrun here, or under `srun` on every Slurm node.

    With several nodes the rendezvous is torchrun's c10d one at `rdzv_endpoint`; a rendezvous
    that not every node joins fails after `rdzv_timeout_s` (torchrun's `join_timeout`).
    """
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={launch.nproc_per_node}"]
    if launch.nnodes == 1:
        # A rendezvous on a free local port: without it torchrun takes 127.0.0.1:29500, and a
        # second run on the same machine (another user, a retraining) fails to bind it.
        command.append("--standalone")
    else:
        endpoint = launch.rdzv_endpoint or (slurm_head_endpoint() if launch.launcher == "srun" else None)
        if not endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port reachable from every node)")
        command += [
            f"--nnodes={launch.nnodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            f"--rdzv_id={launch.rdzv_id or 'streamvln'}",
            f"--rdzv_conf=join_timeout={launch.rdzv_timeout_s}",
        ]
    command += ["-m", "streamvln_model.train", "--plan", str(plan_path)]
    if launch.launcher == "srun":
        # One torchrun per node; a node that fails ends the step on every node.
        return ["srun", f"--nodes={launch.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *command]
    return command


def slurm_head_endpoint() -> str:
    """`<first node of this Slurm allocation>:29500`: the rendezvous every node can reach."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist or not shutil.which("scontrol"):
        raise ValueError(
            "launcher 'srun' runs inside a Slurm allocation (SLURM_JOB_NODELIST unset or no scontrol). "
            "Fix: start the Prefect worker inside sbatch/salloc (docs/DEPLOYMENTS.md), or set rdzv_endpoint"
        )
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    return f"{hosts[0]}:{RDZV_PORT}"


@side_effect_task("trainer-initialization")
def write_trainer_plan(plans: Plans, launch: LaunchConfig, run_dir: str) -> TrainerPlan:
    """Trainer Initialization, as far as the flow host goes: write plan.json and the worker command
    (the torchrun workers build the Trainer from it) and find the checkpoint they will resume.

    plan.json = the run as data: the request's flags, the launch machine's flags, and the
    arguments the flags resolve to (the worker re-resolves them and checks they are equal), with
    every planning stage's result. The workers write into `run_dir` (this flow run's folder under
    the request's output_dir)."""
    arguments, environment, data, memory = plans.arguments, plans.environment, plans.data, plans.memory
    output_dir = Path(run_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    worker_flags = {**environment.worker_flags, "data_index": data.index_path, "output_dir": str(output_dir)}
    plan = {
        "flags": arguments.flags,  # what the request asked; worker_flags win where both name a flag
        "worker_flags": worker_flags,
        "arguments": {"model": arguments.model, "data": arguments.data, "training": arguments.training},
        "substitutions": environment.substitutions,
        "environment": environment.model_dump(),
        "model": {k: v for k, v in plans.model.model_dump().items() if k != "config"},
        "tokenizer": plans.tokenizer.model_dump(),
        "vision": plans.vision.model_dump(),
        "gradients": plans.gradients.model_dump(),
        "data": data.model_dump(),
        "memory": memory.model_dump() if memory else None,  # predicted per-GPU bytes (training/memory/)
    }
    plan_path = output_dir / PLAN_FILE
    write_text_atomically(plan_path, json.dumps(plan, indent=2, default=str))
    resume = resume_checkpoint(output_dir, owner=False)  # what the workers will pick
    if resume:
        get_run_logger().info("will resume from %s", resume)
    return TrainerPlan(
        plan_path=str(plan_path),
        output_dir=str(output_dir),
        command=torchrun_command(launch, plan_path),
        resume_from=resume,
    )
