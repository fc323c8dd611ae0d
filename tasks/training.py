"""Stage 9, Training Loop: torchrun as a subprocess, its output streamed into the Prefect logs.

A non-zero exit fails the task with `TrainingFailed`: the failing rank and its exit code (from
torchrun's failure summary), the tail of the log and the log's path. With task retries, a
relaunch resumes from the newest complete `checkpoint-*` in output_dir (the worker looks for it;
checkpoints a fault interrupted never carry that name, see streamvln_model/trainer.py).

torchrun never outlives the flow: it runs in its own session (a timeout or a cancel stops the
whole group) and Linux sends it SIGTERM when the flow process dies, even by SIGKILL; torchrun
then stops its workers. The `training-progress` artifact shows the step, loss, learning rate,
throughput and time left while it trains. docs/FAULT_TOLERANCE.md has the whole picture.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from pydantic import SecretStr

from streamvln_model.checkpoint.staging import resume_checkpoint
from streamvln_model.training.trainer import PROGRESS_PREFIX
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
# torchrun's c10d rendezvous gives up after its join_timeout with this exception's name.
RENDEZVOUS_TIMEOUT = "RendezvousTimeoutError"
LAUNCHER_FAILED = re.compile(r"\] failed \(exitcode: -?\d+\) local_rank: \d+")

TRAINER_STATE = "trainer_state.json"  # transformers' name, in output_dir and in every checkpoint-N
PROGRESS_KEY = "training-progress"
PROGRESS_INTERVAL_S = 5.0  # the artifact is rewritten at most this often, however fast steps go

# Runs between fork and torchrun: asks Linux (prctl PR_SET_PDEATHSIG = 1) to SIGTERM this process
# when the thread that started it dies, then becomes torchrun (the request survives exec). If the
# flow died before the request, the parent is already someone else: exit instead. A separate
# interpreter, because `preexec_fn` is unsafe in a threaded process such as a Prefect flow.
PARENT_DEATH_SHIM = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) != 0:
    sys.exit("cannot set the parent-death signal: errno %d" % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit("the flow process ended before torchrun started")
os.execvp(sys.argv[2], sys.argv[2:])
"""


class TrainingFailed(RuntimeError):
    """torchrun ended without success; carries what a person needs to act on it.

    `summary` is one line ("training failed on rank 1 (exit code 3)"); `rank` and `exit_code`
    come from torchrun's failure summary (None when it printed none, e.g. after a timeout);
    `tail` is the workers' last lines (torchrun's own traceback and summary are left out: they
    are in the log, and `summary` says what they say) and `log_path` where the whole log is.
    `timed_out`: the run hit its timeout; `trained`: the attempt had logged a training step
    (both decide whether a relaunch may help, `relaunch_may_help`).
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
        timed_out: bool = False,
        trained: bool = False,
    ) -> None:
        super().__init__(message)
        self.summary = summary or message
        self.rank, self.exit_code, self.log_path, self.tail = rank, exit_code, log_path, tuple(tail)
        self.timed_out, self.trained = timed_out, trained


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


def tied_to_this_process(command: list[str]) -> list[str]:
    """`command` run so that it gets SIGTERM when this process dies (Linux; elsewhere unchanged)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-S", "-c", PARENT_DEATH_SHIM, str(os.getpid()), *command]


def start_process(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `command` (torchrun) with stdout+stderr piped, in its own session (so its group can
    be stopped as one) and tied to this process's life (`tied_to_this_process`)."""
    return subprocess.Popen(
        tied_to_this_process(command),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def run_streaming(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    timeout_s: int | None,
    on_progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run, mirror every line to `log_path` and the run logger; returns the progress records
    (each also handed to `on_progress` as it arrives).

    torchrun runs in its own process group so a timeout (or a cancelled task) stops every worker.
    """
    logger = get_run_logger()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    summary: list[str] = []  # torchrun's "Root Cause" entry, kept even when it scrolls out of `tail`
    launcher_report = False  # torchrun's own failure report began: the workers' tail is complete
    rendezvous_failed = False  # torchrun gave up waiting for the other nodes
    progress: list[dict] = []
    with log_path.open("a") as log, start_process(command, env) as process:
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
                rendezvous_failed = rendezvous_failed or RENDEZVOUS_TIMEOUT in line
                if ROOT_CAUSE_MARKER in line:
                    summary = [line]
                elif 0 < len(summary) < ROOT_CAUSE_LINES:
                    summary.append(line)
                if line.startswith(PROGRESS_PREFIX):
                    record = json.loads(line[len(PROGRESS_PREFIX) :])
                    progress.append(record)
                    logger.info("step %s/%s %s", record.get("step"), record.get("max_steps"), _short(record))
                    if on_progress:
                        on_progress(record)
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
        elif rendezvous_failed:
            endpoint, join_timeout = rendezvous_of(command)
            headline = (
                f"the rendezvous at {endpoint} did not form within {join_timeout} s: not every node joined. "
                "Fix: start torchrun on every node (launch.launcher srun under Slurm) and check that "
                f"{endpoint} is reachable from each"
            )
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
            timed_out=timed_out.is_set(),
            trained=bool(progress),
        )
    return progress


def rendezvous_of(command: list[str]) -> tuple[str, str]:
    """(endpoint, join timeout in s) of a multi-node torchrun command, as the command says them."""
    values = dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--rdzv_") and "=" in arg)
    conf = dict(item.split("=", 1) for item in values.get("rdzv_conf", "").split(",") if "=" in item)
    return values.get("rdzv_endpoint", "?"), conf.get("join_timeout", "600")


def _expire(process: subprocess.Popen, timed_out: threading.Event) -> None:
    timed_out.set()
    _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)


def _short(record: dict) -> str:
    keys = ("loss", "learning_rate", "grad_norm", "train_loss")
    return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)


class ProgressBoard:
    """The `training-progress` artifact in the Prefect UI: percent done and one line of figures.

    Made when the task starts (at the resumed checkpoint's step on a retry) and rewritten from
    the workers' progress records, at most every `interval_s` seconds (a run logging every step
    of thousands would otherwise send a request per step), and always for the final step.
    """

    def __init__(
        self,
        start: dict | None,
        interval_s: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s, self.clock = interval_s, clock
        record = start or {}
        description = (
            f"resuming at step {record['step']}/{record['max_steps']}: loading data and model"
            if record
            else "starting torchrun: loading data and model"
        )
        self.artifact_id: UUID = create_progress_artifact(
            percent_done(record), key=PROGRESS_KEY, description=description
        )
        self.shown_at = clock()
        self.latest: dict = {}  # newest value of every figure (the final summary log has no loss)

    def update(self, record: dict) -> None:
        self.latest.update(record)
        final = record.get("max_steps") and record.get("step", 0) >= record["max_steps"]
        if not final and self.clock() - self.shown_at < self.interval_s:
            return
        self.shown_at = self.clock()
        try:
            update_progress_artifact(
                self.artifact_id, percent_done(self.latest), describe_progress(self.latest)
            )
        except Exception as error:  # the UI's progress bar must never stop a training
            get_run_logger().warning("could not update the %s artifact: %s", PROGRESS_KEY, error)


def percent_done(record: dict) -> float:
    """0..100 from a progress record's step and max_steps (0 before the first record)."""
    step, max_steps = record.get("step", 0), record.get("max_steps") or 0
    return round(min(100.0, 100.0 * step / max_steps), 2) if max_steps > 0 else 0.0


def describe_progress(record: dict) -> str:
    """'step 40/100 | loss 1.234 | lr 2.1e-04 | epoch 0.8 | 3.2 samples/s | ETA 0:01:05'."""
    parts = [f"step {record.get('step', 0)}/{record.get('max_steps', '?')}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4g}")
    if "learning_rate" in record:
        parts.append(f"lr {record['learning_rate']:.2e}")
    if "epoch" in record:
        parts.append(f"epoch {record['epoch']:.2f}")
    if "samples_per_second" in record:
        parts.append(f"{record['samples_per_second']:.3g} samples/s")
    if "eta_s" in record:
        parts.append(f"ETA {timedelta(seconds=round(record['eta_s']))}")
    return " | ".join(parts)


def read_trainer_state(folder: str | Path) -> dict | None:
    """transformers' trainer_state.json in `folder` (None when there is none)."""
    path = Path(folder) / TRAINER_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def resume_point(output_dir: str | Path) -> dict | None:
    """{"step", "max_steps"} of the checkpoint a relaunch resumes from (None: none yet)."""
    last = resume_checkpoint(output_dir, owner=False)  # the workers' own choice, read-only here
    state = read_trainer_state(last) if last else None
    return {"step": state["global_step"], "max_steps": state["max_steps"]} if state else None


def logged_losses(state: dict | None, progress: list[dict]) -> list[tuple[int, float]]:
    """(step, loss) of the whole run: the final trainer state's log history (it carries the steps
    of earlier attempts through the checkpoint it resumed from), else this attempt's records."""
    entries = state["log_history"] if state else progress
    return [(int(e["step"]), float(e["loss"])) for e in entries if "loss" in e]


def planned_world_size(plan: TrainerPlan) -> int:
    return int(json.loads(Path(plan.plan_path).read_text())["environment"]["world_size"])


def relaunch_may_help(task, task_run, state) -> bool:
    """Prefect's retry condition for the training loop: relaunch after a fault, not a mistake.

    Retried: a rank killed by a signal (negative exit code: SIGKILL, the OOM killer, a lost
    peer's SIGABRT), and any failure once the attempt had trained a step (a crash mid-run, a
    collective that timed out); the relaunch resumes from the newest complete checkpoint. Not
    retried: the run's timeout (its time is spent), and a rank that exited with an error before
    the first step: bad flags, data or a missing package fail the same way every time, and a
    large model would load again for nothing. Any other exception keeps Prefect's default.
    """
    error = state.data if isinstance(state.data, BaseException) else None
    if not isinstance(error, TrainingFailed):
        return True
    if error.timed_out:
        return False
    killed = error.exit_code is not None and error.exit_code < 0
    return killed or error.trained


@side_effect_task("training-loop", retries=0, retry_condition_fn=relaunch_may_help)
def training_loop(
    plan: TrainerPlan,
    mlflow_run_id: str | None,
    tracking_uri: str | None,
    timeout_s: int | None = None,
    secret_env: dict[str, SecretStr] | None = None,
) -> TrainResult:
    """torchrun the plan. On a retry (task retries) the workers resume from the newest complete
    checkpoint, so the result is read from the final trainer state in output_dir: `steps` is the
    global step the run ended at, `losses` every logged step, whatever attempt logged it."""
    log_path = Path(plan.output_dir) / "train.log"
    env = worker_env(mlflow_run_id, tracking_uri, secret_env)
    board = ProgressBoard(resume_point(plan.output_dir))
    # Other nodes of a multi-node run started by hand run this same command (docs/DEPLOYMENTS.md).
    get_run_logger().info("launching: %s", shlex.join(plan.command))
    progress = run_streaming(plan.command, env, log_path, timeout_s, on_progress=board.update)
    state = read_trainer_state(plan.output_dir)  # written by the final save, after the last step
    losses = logged_losses(state, progress)
    if losses:
        create_table_artifact(
            [{"step": s, "loss": round(v, 5)} for s, v in losses],
            key="training-loss",
            description="Loss per logged step",
        )
    steps = state["global_step"] if state else max((int(r["step"]) for r in progress), default=0)
    return TrainResult(
        output_dir=plan.output_dir,
        steps=steps,
        # rank 0's records say it; when rank 0 ran on another node (a hand-started multi-node run),
        # the plan does
        world_size=max((int(r["world_size"]) for r in progress), default=0) or planned_world_size(plan),
        first_loss=losses[0][1] if losses else None,
        last_loss=losses[-1][1] if losses else None,
        losses=losses,
    )
