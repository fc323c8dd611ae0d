"""A worker that fails after torchrun started fails the training task with the tail of its log,
and the MLflow run opened for it is marked FAILED (never left RUNNING)."""

from __future__ import annotations

import subprocess
import time

import mlflow
import pytest

from tests.helpers import task_states, train_flow


@pytest.fixture
def train(prefect_harness, mlflow_tracking, tiny_checkpoint, synthetic_data, tmp_path):
    """A flow run on the shared tiny checkpoint and data, tracked in the test MLflow server; its state."""

    def run(**fields):
        return train_flow(
            model_name_or_path=str(tiny_checkpoint),
            video_folder=str(synthetic_data),
            output_dir=str(tmp_path / "out"),
            gradient_checkpointing=False,
            plan_root=tmp_path / "plans",
            return_state=True,
            **fields,
        )

    return run


def test_worker_failure_fails_the_task_with_the_log_tail(train, mlflow_server, tmp_path):
    # Passes planning (an optimizer is only a name there) but the worker's Trainer cannot build it:
    # adamw_anyprecision needs torchdistx, which no package registry serves for this torch.
    state = train(
        max_steps=1, extra_args={"optim": "adamw_anyprecision"}, tracking=("failures", "never-registered")
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="torchrun exited with") as failure:
        state.result()
    assert "torchdistx" in str(failure.value).lower()  # the tail of the worker's log
    assert len(list((tmp_path / "out").glob("*/train.log"))) == 1  # in the run folder under output_dir
    states = task_states(state.state_details.flow_run_id, expect=("training-loop",))
    assert states["training-loop"] == ["Failed"]
    assert "model-saving" not in states

    client = mlflow.MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("failures").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert client.search_registered_models(filter_string="name='never-registered'") == []


def test_training_timeout_stops_every_worker(train, tmp_path):
    state = train(
        max_steps=10_000,
        launch={"nproc_per_node": 2, "timeout_s": 20},
        tracking=("timeouts", "never-registered-either"),
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="after the 20 s timeout"):
        state.result()
    deadline = time.monotonic() + 15  # workers exit on SIGTERM; give them a moment
    while (survivors := _processes_mentioning(tmp_path / "out")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert survivors == "", survivors


def _processes_mentioning(path) -> str:
    return subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True).stdout.strip()
