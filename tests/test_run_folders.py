"""One run folder per flow run, one writer per folder, explicit resume, nothing registered twice.

The library part (streamvln_model/run_folder.py) is checked with real processes holding real
locks; the flow part runs the real flow on the test Prefect and MLflow servers: a flow process
is started, a second run on its folder is turned away naming it, the first is SIGKILLed while
training, and a rerun marks it Crashed and finishes its training into the same MLflow run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from prefect.client.orchestration import get_client

from streamvln_model.training.run_folder import (
    FolderLock,
    RunFolderError,
    RunRecord,
    find_folder,
    new_folder,
    read_record,
    write_record,
)
from tests.helpers import service_env, tiny_request, train_flow

REPO_ROOT = Path(__file__).resolve().parents[1]

HOLD_LOCK = r"""
import sys, time
from streamvln_model.training.run_folder import FolderLock
lock = FolderLock(sys.argv[1], {"flow_run_name": "brave-otter", "flow_run_id": "1234"}).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.processes  # the holder is a subprocess
def test_a_held_folder_turns_a_second_writer_away_naming_the_holder_until_it_dies(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(
            RunFolderError, match=r"in use by another run: brave-otter \(flow run 1234\)"
        ) as err:
            FolderLock(folder, {"flow_run_name": "second"}).acquire()
        assert f"pid {holder.pid}" in str(err.value)
        assert time.monotonic() - started < 1  # at once, no waiting
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
        holder.wait()
    with FolderLock(folder, {"flow_run_name": "second"}):  # the kernel dropped the dead holder's lock
        assert json.loads((folder / ".lock").read_text())["flow_run_name"] == "second"


def test_resume_from_finds_a_folder_by_name_path_run_ids_or_latest(tmp_path):
    root = tmp_path / "runs"
    for i, name in enumerate(("first", "second")):
        (root / name).mkdir(parents=True)
        write_record(
            root / name,
            RunRecord(name=name, flow_run_id=f"flow-{i}", flow_run_name=f"run-{i}", mlflow_run_id=f"ml-{i}",
                      created=1000.0 + i),
        )  # fmt: skip
    assert find_folder(root, "latest") == root / "second"
    assert find_folder(root, "first") == (root / "first").resolve()
    assert find_folder(root, str(root / "second")) == (root / "second").resolve()
    assert find_folder(root, "flow-0") == root / "first"
    assert find_folder(root, "ml-1") == root / "second"
    assert find_folder(root, "run-0") == root / "first"
    with pytest.raises(RunFolderError, match=r"no such run folder .* \(recent runs: first, second\)"):
        find_folder(root, "third")
    with pytest.raises(RunFolderError, match="holds no run folder"):
        find_folder(tmp_path / "empty", "latest")
    # A new run never lands in an existing folder, even when its (random) name repeats.
    assert new_folder(root, "third", "abcd1234") == root / "third"
    assert new_folder(root, "first", "abcd1234") == root / "first-abcd1234"


# --- The flow -----------------------------------------------------------------------------------
STEPS = 8
FLOW_RUN = r"""
import json, sys
from flows.train import streamvln_train
from tasks.parameters import LaunchConfig, TrackingConfig, TrainRequest

spec = json.loads(sys.argv[1])
result = streamvln_train(
    **TrainRequest(**spec["request"]).groups(),
    launch=LaunchConfig(nproc_per_node=1, device="cpu"),
    tracking=TrackingConfig(**spec["tracking"]),
    plan_root=spec["plan_root"],
)
print("FLOW_RESULT " + result.model_dump_json())
"""


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout_s} s")


def _workers_of(folder: Path) -> str:
    return subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tracked(prefect_harness, mlflow_tracking):
    return mlflow.MlflowClient(mlflow_tracking.uri)


def test_killed_flow_process_is_closed_and_resumed_into_its_mlflow_run_and_a_finished_run_is_left_alone(
    tracked, prefect_harness, mlflow_server, tiny_checkpoint, synthetic_data, tmp_path
):
    root, plans = tmp_path / "runs", tmp_path / "plans"
    fields = dict(
        model_name_or_path=str(tiny_checkpoint), video_folder=str(synthetic_data), output_dir=str(root),
        max_steps=STEPS, save_strategy="steps", save_steps=2, logging_steps=1,
    )  # fmt: skip
    tracking = {"experiment_name": "run-folders", "model_name": "run-folders"}
    spec = {"request": tiny_request(**fields).model_dump(exclude_none=True), "tracking": tracking,
            "plan_root": str(plans)}  # fmt: skip
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [sys.executable, "-c", FLOW_RUN, json.dumps(spec)],
        cwd=REPO_ROOT, env=service_env(prefect_harness, mlflow_server), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        folder = _wait_for(lambda: next(iter(root.glob("*/run.json")), None), 300, "a run folder").parent
        holder = read_record(folder)
        flow_run = {
            **fields,
            "tracking": (tracking["experiment_name"], tracking["model_name"]),
            "plan_root": plans,
        }

        # A second run on the same folder is turned away at once, naming the first.
        started = time.monotonic()
        state = train_flow(**flow_run, resume_from=folder.name, return_state=True)
        assert state.is_failed()
        with pytest.raises(RunFolderError, match=f"in use by another run: {holder.flow_run_name}"):
            state.result()
        assert time.monotonic() - started < 60  # planning is cached; the lock itself answers at once

        # SIGKILL the first flow process mid-training (after its checkpoint at step 4).
        _wait_for(lambda: (folder / "checkpoint-4").is_dir(), 300, "checkpoint-4")
        first.send_signal(signal.SIGKILL)
        first.wait()
        _wait_for(lambda: not _workers_of(folder), 30, "its torchrun workers exiting with it")
        mlflow_run_id = read_record(folder).mlflow_run_id
        assert tracked.get_run(mlflow_run_id).info.status == "RUNNING"  # nobody said anything yet

        resumed = train_flow(**flow_run, resume_from="latest")
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(holder.flow_run_id).state.name == "Crashed"
    assert resumed.output_dir == str(folder) and resumed.mlflow_run_id == mlflow_run_id
    assert resumed.resumed_from_step is not None and resumed.resumed_from_step >= 4
    assert resumed.steps == STEPS and resumed.registered
    run = tracked.get_run(mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert holder.flow_run_id in run.data.tags["prefect.flow_run_ids"]
    steps = sorted(m.step for m in tracked.get_metric_history(mlflow_run_id, "loss"))
    assert steps == list(range(1, STEPS + 1))  # every step once: no gap, no duplicate
    versions = tracked.search_model_versions("name='run-folders'")
    assert [v.version for v in versions] == [resumed.model_version]

    # Rerunning the finished run trains nothing and registers nothing.
    again = train_flow(**flow_run, resume_from=str(folder))
    assert not again.registered and "finished already" in again.skipped_reason
    assert len(tracked.search_model_versions("name='run-folders'")) == 1
    assert len(tracked.get_metric_history(mlflow_run_id, "loss")) == STEPS
    assert read_record(folder).finished and os.path.isdir(folder)
