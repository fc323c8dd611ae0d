"""The service fixtures are real: each test talks to its server over HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # `request.getfixturevalue` starts the servers: no fixture name to see


def test_mlflow_server_tracks_metrics_and_proxies_artifacts(mlflow_server, tmp_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment(f"fixture-check-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    # Artifacts go through the server, not to a path the client would need to see.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    client.log_metric(run_id, "loss", 0.5, step=1)
    client.log_param(run_id, "lr", "0.001")
    note = tmp_path / "note.txt"
    note.write_text("hello from the test")
    client.log_artifact(run_id, str(note), artifact_path="notes")
    client.set_terminated(run_id)

    fetched = client.get_run(run_id)
    assert fetched.data.metrics["loss"] == 0.5
    assert fetched.data.params["lr"] == "0.001"
    assert fetched.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
    downloaded = client.download_artifacts(run_id, "notes/note.txt", str(tmp_path / "download"))
    assert Path(downloaded).read_text() == "hello from the test"
    # ... and the server stored it under its --artifacts-destination.
    stored = list(mlflow_server.artifact_root.rglob("note.txt"))
    assert len(stored) == 1


def test_moto_s3_roundtrip_with_s3fs(moto_s3) -> None:
    fs = moto_s3.fs()
    bucket = f"fixture-check-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    with fs.open(f"{bucket}/dir/a.txt", "wb") as f:
        f.write(b"payload")
    fs.pipe(f"{bucket}/dir/b.bin", b"\x00\x01")

    assert fs.cat(f"{bucket}/dir/a.txt") == b"payload"
    assert sorted(fs.ls(f"{bucket}/dir")) == [f"{bucket}/dir/a.txt", f"{bucket}/dir/b.bin"]
    assert fs.du(f"{bucket}/dir") == len(b"payload") + 2


def test_prefect_flow_runs_and_caches_in_harness(prefect_harness) -> None:
    from prefect import flow, task
    from prefect.cache_policies import INPUTS

    @task
    def add_one(x: int) -> int:
        return x + 1

    @task(cache_policy=INPUTS, persist_result=True)
    def square(x: int) -> int:
        return x * x

    @flow
    def tiny_flow(x: int) -> dict:
        first = square(x, return_state=True)
        second = square(x, return_state=True)
        return {
            "value": add_one(x),
            "first": first.name,
            "second": second.name,
            "second_result": second.result(),
        }

    out = tiny_flow(6)
    assert out == {"value": 7, "first": "Completed", "second": "Cached", "second_result": 36}
    # The cached result lives in the session's storage, not in the developer's ~/.prefect.
    assert any(p.is_file() for p in prefect_harness.results_path.iterdir())
    assert prefect_harness.api_url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("fixture_name", ["mlflow_server", "moto_s3"])
def test_service_processes_are_alive(fixture_name: str, request: pytest.FixtureRequest) -> None:
    service = request.getfixturevalue(fixture_name).service
    assert service.process.poll() is None
    print(f"{service.name}: healthy after {service.startup_s:.1f} s")
