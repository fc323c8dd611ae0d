"""Stage 9, Training Loop: torchrun as a subprocess, its output streamed into the Prefect logs.

A non-zero exit fails the task with `TrainingFailed`: the failing rank and its exit code (from
torchrun's failure summary), the tail of the log and the log's path. With task retries, a
relaunch resumes from the newest `checkpoint-*` in output_dir (the worker looks for it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import SecretStr

from streamvln_model.trainer import PROGRESS_PREFIX
from tasks.caching import side_effect_task
from tasks.types import TrainerPlan, TrainResult

LOG_TAIL_LINES = 60

# torchrun (torch.distributed.elastic) ends a failed run with a summary whose "Root Cause" entry
# names the first worker that failed:
#   Root Cause (first observed failure):
#   [0]:
#     time      : 2026-11-28_18:00:20
#     host      : localhost
#     rank      : 1 (local_rank: 1)
#     exitcode  : 3 (pid: 4902)
ROOT_CAUSE_MARKER = "Root Cause (first observed failure)"
ROOT_CAUSE_LINES = 8  # the marker and the entry's fields up to `exitcode`
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXIT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
# Before that summary, torchrun's agent logs the failure and raises with its own traceback:
#   E1128 18:00:20.030000 4896 torch/.../api.py:1002] failed (exitcode: 3) local_rank: 1 (pid: 4902) ...
# The lines from there on are torchrun's report, not the workers' output; the tail stops there.
LAUNCHER_FAILED = re.compile(r"\] failed \(exitcode: -?\d+\) local_rank: \d+")


class TrainingFailed(RuntimeError):
    """torchrun ended without success; carries what a person needs to act on it.

    `summary` is one line ("training failed on rank 1 (exit code 3)"); `rank` and `exit_code`
    come from torchrun's failure summary (None when it printed none, e.g. after a timeout);
    `tail` is the workers' last lines (torchrun's own traceback and summary are left out: they
    are in the log, and `summary` says what they say) and `log_path` where the whole log is.
    The fields are keyword arguments so that the exception pickles like any other
    (`BaseException.__reduce__` calls the class with the message, then restores `__dict__`).
    """

    def __init__(
        self,
        message: str,
        *,
        summary: str | None = None,
        rank: int | None = None,
        exit_code: int | None = None,
        log_path: str | None = None,
        tail: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.summary = summary or message
        self.rank, self.exit_code, self.log_path, self.tail = rank, exit_code, log_path, tuple(tail)


def root_cause(summary_lines: list[str]) -> tuple[int | None, int | None]:
    """(rank, exit code) of the "Root Cause" entry of torchrun's failure summary, if present."""
    rank = exit_code = None
    for line in summary_lines:
        if rank is None and (match := _RANK.match(line)):
            rank = int(match.group(1))
        elif exit_code is None and (match := _EXIT_CODE.match(line)):
            exit_code = int(match.group(1))
    return rank, exit_code


def worker_env(
    mlflow_run_id: str | None, tracking_uri: str | None, secret_env: dict[str, SecretStr] | None = None
) -> dict[str, str]:
    """The workers' environment; secrets arrive here (see streamvln_model/secrets.py), never as flags."""
    env = dict(os.environ)
    env.update({name: value.get_secret_value() for name, value in (secret_env or {}).items()})
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
    summary: list[str] = []  # torchrun's "Root Cause" entry, kept even when it scrolls out of `tail`
    launcher_report = False  # torchrun's own failure report began: the workers' tail is complete
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
                if not launcher_report:
                    tail.append(line)
                    launcher_report = bool(LAUNCHER_FAILED.search(line))
                if ROOT_CAUSE_MARKER in line:
                    summary = [line]
                elif 0 < len(summary) < ROOT_CAUSE_LINES:
                    summary.append(line)
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
    if code != 0:
        rank, exit_code = root_cause(summary)
        if timed_out.is_set():
            headline = f"training stopped after the {timeout_s} s timeout"
        elif rank is not None:
            headline = f"training failed on rank {rank} (exit code {exit_code})"
        else:
            headline = "training failed"
        raise TrainingFailed(
            f"{headline}: torchrun exited with {code}; last lines of {log_path}:\n" + "\n".join(tail),
            summary=headline,
            rank=rank,
            exit_code=exit_code,
            log_path=str(log_path),
            tail=tuple(tail),
        )
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


@side_effect_task("training-loop", retries=0)
def train(
    plan: TrainerPlan,
    mlflow_run_id: str | None,
    tracking_uri: str | None,
    timeout_s: int | None = None,
    secret_env: dict[str, SecretStr] | None = None,
) -> TrainResult:
    log_path = Path(plan.output_dir) / "train.log"
    env = worker_env(mlflow_run_id, tracking_uri, secret_env)
    progress = run_streaming(plan.command, env, log_path, timeout_s)
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
