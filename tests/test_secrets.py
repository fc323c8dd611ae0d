"""A token given as a flag reaches the workers' environment and no file the run writes.

The run is real: the flow trains and saves a checkpoint (whose `training_args.bin` the Trainer
pickles), tracks into an `mlflow server`, and Prefect records parameters, logs and results in its
database. Every file of those is searched for the canary afterwards.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from flows.train import streamvln_train
from tasks.parameters import LaunchConfig, TrackingConfig
from tests.helpers import tiny_request

CANARY = "hf_CANARYc4n4ry0123456789abcdefXYZ"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_hub_token_flag_never_reaches_a_file(
    prefect_harness, mlflow_server, tiny_checkpoint, synthetic_data, tmp_path, monkeypatch
):
    import prefect.settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)
    request = tiny_request(
        model_name_or_path=str(tiny_checkpoint),
        video_folder=str(synthetic_data),
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        save_strategy="steps",
        save_steps=1,  # a checkpoint-* folder holds the Trainer's pickled training_args.bin
        extra_args={"hub_token": CANARY},
    )
    result = streamvln_train(
        **request.groups(),
        launch=LaunchConfig(device="cpu", nproc_per_node=1),
        tracking=TrackingConfig(experiment_name="secrets", model_name="secrets-model"),
        plan_root=str(tmp_path / "plans"),
    )
    assert result.steps == 2 and result.model_version

    run_dir = Path(result.output_dir)
    log = (run_dir / "train.log").read_text()
    assert "secrets from the environment: HF_TOKEN" in log  # the worker got it, by name only
    assert (run_dir / "checkpoint-1" / "training_args.bin").is_file()

    prefect_db = Path(prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    mlflow_db = Path(mlflow_server.backend_store_uri.split("///", 1)[1])
    searched = {
        "run folders": tmp_path,
        "Prefect home and results": prefect_harness.home,
        "Prefect database": prefect_db.parent,
        "MLflow database and server log": mlflow_db.parent,
        "MLflow artifacts": mlflow_server.artifact_root,
    }
    for where, root in searched.items():
        assert root.is_dir(), where
        assert _files_containing(root, CANARY.encode()) == [], where
    # The searches are not vacuous: the same roots hold this run's records.
    assert _files_containing(prefect_db.parent, request.output_dir.encode())
    assert _files_containing(mlflow_server.artifact_root, b"model.safetensors") or any(
        mlflow_server.artifact_root.rglob("model.safetensors")
    )


def test_secret_blocks_fill_unset_variables_and_the_environment_wins(prefect_harness, monkeypatch):
    """S3 keys and tracking tokens come from Prefect Secret blocks when the worker's environment
    lacks them; the torchrun workers (children of the flow process) inherit them."""
    import os
    import subprocess
    import sys

    from prefect import flow
    from prefect.blocks.system import Secret

    from tasks.secrets import SECRET_BLOCKS, load_secret_blocks

    Secret(value="block-aws-secret").save(SECRET_BLOCKS["AWS_SECRET_ACCESS_KEY"], overwrite=True)
    Secret(value="block-hf-token").save(SECRET_BLOCKS["HF_TOKEN"], overwrite=True)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("HF_TOKEN", "environment-hf-token")

    @flow
    def flow_with_secrets() -> tuple[dict[str, str], str]:
        sources = load_secret_blocks()
        child = [sys.executable, "-c", "import os; print(os.environ['AWS_SECRET_ACCESS_KEY'])"]
        return sources, subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sources, seen_by_child = flow_with_secrets()
    finally:  # every later flow run of the session would otherwise load them too
        for variable in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
            Secret.delete(SECRET_BLOCKS[variable])
    assert sources["AWS_SECRET_ACCESS_KEY"] == "secret block streamvln-aws-secret-access-key"
    assert sources["HF_TOKEN"] == "environment" and os.environ["HF_TOKEN"] == "environment-hf-token"
    assert seen_by_child == "block-aws-secret"
    assert not any("block-" in source for source in sources.values())  # names and origins only
