"""Training that survives faults (docs/FAULT_TOLERANCE.md).

A SIGKILLed rank fails the attempt; the retried training task resumes from the newest complete
checkpoint and ends at the planned step; MLflow holds each step's metrics once; torchrun never
outlives the flow process; the `training-progress` artifact follows the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
import pytest
from transformers import TrainerState

from streamvln_model.checkpoint.staging import STAGING_DIR
from streamvln_model.training.trainer import MlflowRunCallback
from tasks.training import (
    PROGRESS_KEY,
    ProgressBoard,
    TrainingFailed,
    describe_progress,
    percent_done,
    relaunch_may_help,
)
from tests.helpers import mlflow_tracking_at, train_flow

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
KILL_AFTER = "checkpoint-4"  # SIGKILL rank 1 once this checkpoint is complete (save every 2 steps)

# The flow process's stand-in: starts a command the way the training task does, says so, waits.
FLOW_STAND_IN = textwrap.dedent(
    """
    import os, sys, time
    from tasks.training import start_process
    process = start_process(sys.argv[1:], dict(os.environ))
    print(process.pid, flush=True)
    time.sleep(600)
    """
)
# A torchrun worker that only records its pid and waits to be stopped.
SLEEPING_WORKER = textwrap.dedent(
    """
    import os, pathlib, sys, time
    pathlib.Path(sys.argv[1], os.environ["RANK"]).write_text(str(os.getpid()))
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.processes  # torchrun under a stand-in flow process
def test_torchrun_and_its_workers_die_with_the_flow_process(tmp_path):
    worker, pids = tmp_path / "worker.py", tmp_path / "pids"
    worker.write_text(SLEEPING_WORKER)
    pids.mkdir()
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(worker),
        str(pids),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    flow = subprocess.Popen(
        [sys.executable, "-c", FLOW_STAND_IN, *torchrun], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        launcher = int(flow.stdout.readline())
        _wait_until(lambda: len(list(pids.iterdir())) == 2, 60, "both ranks to start")
        workers = [int(p.read_text()) for p in pids.iterdir()]
        assert psutil.Process(launcher).ppid() == flow.pid  # torchrun itself, not a shell between
        assert all(psutil.Process(w).ppid() == launcher for w in workers)

        flow.send_signal(signal.SIGKILL)  # no handler, no finally: only the kernel can tell torchrun
        flow.wait()
        _wait_until(
            lambda: not any(_alive(p) for p in (launcher, *workers)), 30, "torchrun and its workers to stop"
        )
    finally:
        flow.kill()
        for path in pids.iterdir():
            if _alive(pid := int(path.read_text())):
                os.kill(pid, signal.SIGKILL)


# --- The flow: a rank SIGKILLed mid-training, the training task retried ------------------------
class RankKiller(threading.Thread):
    """SIGKILLs torchrun worker rank `rank` of a run under `root` once the complete checkpoint
    `after` exists in its run folder (`root/<run>/after`; one being written is elsewhere).

    A worker is told from torchrun by its command line (torchrun's names torch.distributed.run,
    the worker's does not) and from the other ranks by the RANK torchrun put in its environment.
    """

    def __init__(self, root: Path, after: str, rank: int = 1, timeout_s: float = 600) -> None:
        super().__init__(daemon=True)
        self.root, self.after, self.rank, self.timeout_s = root, after, str(rank), timeout_s
        self.killed: psutil.Process | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            if any(self.root.glob(f"*/{self.after}")) and (target := self.find_rank()):
                target.send_signal(signal.SIGKILL)
                self.killed = target
                return
            time.sleep(0.1)

    def find_rank(self) -> psutil.Process | None:
        for process in psutil.process_iter(["cmdline"]):
            command = " ".join(process.info["cmdline"] or ())
            if "streamvln_model.train" not in command or "torch.distributed.run" in command:
                continue
            if str(self.root) not in command:
                continue
            try:
                if process.environ().get("RANK") == self.rank:
                    return process
            except psutil.Error:
                continue
        return None


@dataclass(frozen=True)
class FaultedRun:
    result: object  # TrainFlowResult
    flow_run_id: str
    killed_pid: int
    seconds: float


@pytest.fixture(scope="module")
def faulted_run(prefect_harness, mlflow_server, tiny_checkpoint, synthetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_tolerance")
    killer = RankKiller(root / "runs", KILL_AFTER)
    with mlflow_tracking_at(mlflow_server.uri):
        killer.start()
        started = time.monotonic()
        try:  # one flow run: 2 CPU ranks, up to 2 relaunches of the training
            state = train_flow(
                model_name_or_path=str(tiny_checkpoint),
                video_folder=str(synthetic_data),
                output_dir=str(root / "runs"),
                max_steps=MAX_STEPS,
                save_strategy="steps",
                save_steps=2,
                launch={"nproc_per_node": 2},
                tracking=("fault-tolerance", "streamvln-fault-tolerance"),
                plan_root=root / "plans",
                train_retries=2,
                return_state=True,
            )
        finally:
            killer.stop.set()
            killer.join()
    assert killer.killed is not None, f"rank 1 was never seen running after {KILL_AFTER}"
    assert state.is_completed(), state
    return FaultedRun(
        state.result(), str(state.state_details.flow_run_id), killer.killed.pid, time.monotonic() - started
    )


def _training_task_states(flow_run_id: str) -> list[str]:
    """Every state the flow run's training-loop task run went through, in order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tests.helpers import task_states

    task_states(flow_run_id, expect=("training-loop",))  # waits until the API holds it, settled
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        (run,) = [r for r in runs if r.name.startswith("training-loop")]
        return [s.name for s in sorted(client.read_task_run_states(run.id), key=lambda s: s.timestamp)]


def test_killed_rank_fails_the_attempt_and_the_retry_resumes(faulted_run):
    states = _training_task_states(faulted_run.flow_run_id)
    assert "Retrying" in states or "AwaitingRetry" in states, states
    assert states[-1] == "Completed", states
    run_dir = Path(faulted_run.result.output_dir)
    log = (run_dir / "train.log").read_text()
    assert f"pid: {faulted_run.killed_pid}" in log  # torchrun saw that rank die
    # Every rank of the relaunch names the same checkpoint: the complete one, or a later one.
    resumed = {
        line.rsplit("/", 1)[1] for line in log.splitlines() if "streamvln.train INFO resuming from" in line
    }
    assert len(resumed) == 1, resumed
    assert int(resumed.pop().split("-")[1]) >= int(KILL_AFTER.split("-")[1])


def test_the_model_ends_at_the_planned_step(faulted_run):
    run_dir = Path(faulted_run.result.output_dir)
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    assert faulted_run.result.steps == MAX_STEPS
    assert not (run_dir / STAGING_DIR).exists()


def test_mlflow_holds_every_step_once_across_attempts(faulted_run, mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    steps = sorted(m.step for m in client.get_metric_history(faulted_run.result.mlflow_run_id, "loss"))
    assert steps == list(range(1, MAX_STEPS + 1))


def test_progress_artifact_reaches_100_percent(faulted_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[PROGRESS_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[faulted_run.flow_run_id]),
            )
        )
    # One per attempt; the last one ends the run.
    assert len(artifacts) >= 2
    last = max(artifacts, key=lambda a: a.created)
    assert last.data == 100
    assert f"step {MAX_STEPS}/{MAX_STEPS} | loss " in last.description
    assert "samples/s" in last.description and "ETA 0:00:00" in last.description


# --- The pieces, without a flow -----------------------------------------------------------------
PLANNED = 10  # max_steps of the runs the pieces below pretend to follow


def _trainer_state(step: int) -> TrainerState:
    return TrainerState(global_step=step, max_steps=PLANNED, is_world_process_zero=True)


def test_a_relaunch_logs_no_step_twice(mlflow_tracking):
    client = mlflow.MlflowClient(mlflow_tracking.uri)
    experiment = client.create_experiment(f"relaunch-{time.time_ns()}")
    run_id = client.create_run(experiment).info.run_id

    def attempt(first_step: int, last_step: int, loss: float) -> None:
        callback = MlflowRunCallback(run_id)
        callback.on_train_begin(None, _trainer_state(first_step - 1), None)
        for step in range(first_step, last_step + 1):
            callback.on_log(None, _trainer_state(step), None, logs={"loss": loss, "learning_rate": 1e-3})

    attempt(1, 6, loss=1.0)  # died after logging step 6; its newest checkpoint was step 4
    attempt(5, PLANNED, loss=2.0)
    for key in ("loss", "learning_rate"):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, PLANNED + 1)), key
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    assert losses == [1.0] * 6 + [2.0] * 4  # steps 5-6 keep the first attempt's values


def test_progress_board_updates_at_most_every_interval(prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    @flow
    def follow_training() -> list[tuple[float, str]]:
        """The board as the training task drives it; what the API shows after each call."""
        now = [0.0]
        board = ProgressBoard({"step": 4, "max_steps": PLANNED}, interval_s=5.0, clock=lambda: now[0])

        def shown() -> tuple[float, str]:
            with get_client(sync_client=True) as client:
                (artifact,) = client.read_artifacts(
                    artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[board.artifact_id]))
                )
            return artifact.data, artifact.description

        views = [shown()]
        board.update({"step": 5, "max_steps": PLANNED, "loss": 2.5})
        views.append(shown())
        now[0] = 6.0
        board.update({"step": 6, "max_steps": PLANNED, "loss": 2.25, "learning_rate": 1e-3})
        views.append(shown())
        board.update({"step": PLANNED, "max_steps": PLANNED, "train_loss": 2.0})  # final: at once
        views.append(shown())
        return views

    start, too_soon, due, final = follow_training()
    assert start[0] == 40 and "resuming at step 4/10" in start[1]
    assert too_soon == start  # within 5 s of the last update
    assert due[0] == 60 and due[1].startswith("step 6/10 | loss 2.25 | lr 1.00e-03")
    assert final[0] == 100 and final[1].startswith("step 10/10 | loss 2.25")  # newest loss kept


def test_progress_description_and_percent():
    record = {
        "step": 40,
        "max_steps": 100,
        "loss": 1.23456,
        "learning_rate": 2.1e-4,
        "epoch": 0.8,
        "samples_per_second": 3.21,
        "eta_s": 65.4,
    }
    assert describe_progress(record) == (
        "step 40/100 | loss 1.235 | lr 2.10e-04 | epoch 0.80 | 3.21 samples/s | ETA 0:01:05"
    )
    assert percent_done(record) == 40.0
    assert percent_done({}) == 0.0
    assert percent_done({"step": 12, "max_steps": 10}) == 100.0


@pytest.mark.parametrize(
    ("failure", "retried"),
    [
        (TrainingFailed("rank 1 killed", rank=1, exit_code=-9), True),  # SIGKILL, even before step 1
        (TrainingFailed("crashed mid-run", rank=0, exit_code=1, trained=True), True),
        (TrainingFailed("bad flag", rank=0, exit_code=1), False),  # fails the same way every time
        (TrainingFailed("timeout", timed_out=True, trained=True), False),  # its time is spent
        (OSError("disk full"), True),  # not ours to judge: Prefect's default
    ],
)
def test_only_faults_a_relaunch_can_fix_are_retried(failure, retried):
    import pickle

    from prefect.states import Failed

    failure = pickle.loads(pickle.dumps(failure))  # how it travels (result storage, processes)
    assert relaunch_may_help(None, None, Failed(data=failure)) is retried
