"""A token given as a flag reaches the workers' environment and no file the run writes.

The run is real (the session's `finished_training`): the flow trains on 2 ranks and saves a
checkpoint (whose `training_args.bin` the Trainer pickles), tracks into an `mlflow server`, and
Prefect records parameters, logs and results in its database. Every file of those is searched
for the canary afterwards.
"""

from __future__ import annotations

from pathlib import Path


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_hub_token_flag_never_reaches_a_file(finished_training, prefect_harness, mlflow_server):
    """The session's 2-rank training (tests/conftest.py `finished_training`) was given
    `--hub_token <canary>` and saved a checkpoint."""
    import prefect.settings

    canary = finished_training.hub_token
    assert finished_training.steps == finished_training.max_steps and finished_training.model_version

    run_dir = Path(finished_training.output_dir)
    log = (run_dir / "train.log").read_text()
    assert "secrets from the environment: HF_TOKEN" in log  # the worker got it, by name only
    assert (run_dir / f"checkpoint-{finished_training.save_steps}" / "training_args.bin").is_file()

    prefect_db = Path(prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    mlflow_db = Path(mlflow_server.backend_store_uri.split("///", 1)[1])
    searched = {
        "run folders": finished_training.workdir,
        "Prefect home and results": prefect_harness.home,
        "Prefect database": prefect_db.parent,
        "MLflow database and server log": mlflow_db.parent,
        "MLflow artifacts": mlflow_server.artifact_root,
    }
    for where, root in searched.items():
        assert root.is_dir(), where
        assert _files_containing(root, canary.encode()) == [], where
    # The searches are not vacuous: the same roots hold this run's records.
    assert _files_containing(prefect_db.parent, str(run_dir.parent).encode())  # the request's output_dir
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
