"""Stage 9, Training Loop: torchrun as a subprocess, its output streamed into the Prefect logs.

A non-zero exit fails the task with the tail of the log. With task retries, a relaunch resumes
from the newest `checkpoint-*` in output_dir (the worker looks for it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from streamvln_model.trainer import PROGRESS_PREFIX
from tasks.types import TrainerPlan, TrainResult

LOG_TAIL_LINES = 60


class TrainingFailed(RuntimeError):
    pass


def worker_env(mlflow_run_id: str | None, tracking_uri: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if mlflow_run_id:
        env["MLFLOW_RUN_ID"] = mlflow_run_id
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def run_streaming(
    command: list[str], env: dict[str, str], log_path: Path, timeout_s: int | None
) -> list[dict]:
    """Run, mirror every line to `log_path` and the run logger; returns the progress records.

    torchrun runs in its own process group so a timeout (or a cancelled task) stops every worker.
    """
    logger = get_run_logger()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    progress: list[dict] = []
    with (
        log_path.open("a") as log,
        subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        ) as process,
    ):
        timed_out = threading.Event()
        watchdog = threading.Timer(timeout_s, _expire, args=(process, timed_out)) if timeout_s else None
        if watchdog:
            watchdog.start()
        try:
            for line in process.stdout:
                log.write(line)
                line = line.rstrip()
                tail.append(line)
                if line.startswith(PROGRESS_PREFIX):
                    record = json.loads(line[len(PROGRESS_PREFIX) :])
                    progress.append(record)
                    logger.info("step %s/%s %s", record.get("step"), record.get("max_steps"), _short(record))
                elif line and not line.startswith("{'"):
                    logger.info(line)
            code = process.wait()
        finally:
            if watchdog:
                watchdog.cancel()
            if process.poll() is None:  # interrupted (e.g. the task was cancelled)
                _stop_group(process)
    if timed_out.is_set() and code != 0:
        raise TrainingFailed(
            f"training stopped after the {timeout_s} s timeout; last lines of {log_path}:\n" + "\n".join(tail)
        )
    if code != 0:
        raise TrainingFailed(f"torchrun exited with {code}; last lines of {log_path}:\n" + "\n".join(tail))
    return progress


def _expire(process: subprocess.Popen, timed_out: threading.Event) -> None:
    timed_out.set()
    _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)


def _short(record: dict) -> str:
    keys = ("loss", "learning_rate", "grad_norm", "train_loss")
    return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)


@task(name="training-loop", retries=0)
def train(
    plan: TrainerPlan, mlflow_run_id: str | None, tracking_uri: str | None, timeout_s: int | None = None
) -> TrainResult:
    log_path = Path(plan.output_dir) / "train.log"
    progress = run_streaming(plan.command, worker_env(mlflow_run_id, tracking_uri), log_path, timeout_s)
    losses = [(int(r["step"]), float(r["loss"])) for r in progress if "loss" in r]
    if losses:
        create_table_artifact(
            [{"step": s, "loss": round(v, 5)} for s, v in losses],
            key="training-loss",
            description="Loss per logged step",
        )
    return TrainResult(
        output_dir=plan.output_dir,
        steps=max((int(r["step"]) for r in progress), default=0),
        world_size=max((int(r["world_size"]) for r in progress), default=0),
        first_loss=losses[0][1] if losses else None,
        last_loss=losses[-1][1] if losses else None,
        losses=losses,
    )
