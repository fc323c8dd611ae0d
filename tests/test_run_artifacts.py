"""What a finished training leaves for people: Prefect artifacts on the flow run (data report,
parameter table, progress at 100 %, MLflow link, loss image) and lineage in MLflow (the dataset
input on the run, its digest = the index content hash; the same data named on the version)."""

from __future__ import annotations

import mlflow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tasks.data import REPORT_KEY
from tasks.reporting import DATASET_NAME, LOSS_CURVE_KEY, MLFLOW_RUN_KEY, PARAMETERS_KEY
from tasks.training import PROGRESS_KEY


def _artifacts(flow_run_id) -> dict[str, list]:
    """Artifact key -> its versions on this flow run (and its task runs), oldest first."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_key: dict[str, list] = {}
    for artifact in sorted(found, key=lambda a: a.created):
        by_key.setdefault(artifact.key, []).append(artifact)
    return by_key


def test_finished_run_lists_its_artifacts(finished_training):
    artifacts = _artifacts(finished_training.flow_run_id)
    assert {REPORT_KEY, PARAMETERS_KEY, PROGRESS_KEY, MLFLOW_RUN_KEY, LOSS_CURVE_KEY} <= set(artifacts), (
        sorted(artifacts)
    )
    progress = artifacts[PROGRESS_KEY][-1]
    assert progress.type == "progress" and float(progress.data) == 100.0
    [link] = artifacts[MLFLOW_RUN_KEY]  # published once, when the run opened: followable while training
    assert f"/runs/{finished_training.mlflow_run_id}" in link.data
    assert "data:image/png;base64," in artifacts[LOSS_CURVE_KEY][-1].data
    assert artifacts[PARAMETERS_KEY][-1].type == "table"


def test_mlflow_run_and_version_name_the_training_data(finished_training, mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(finished_training.mlflow_run_id)
    [dataset_input] = run.inputs.dataset_inputs
    fingerprint = finished_training.data_fingerprint
    assert dataset_input.dataset.name == DATASET_NAME
    assert fingerprint.startswith(dataset_input.dataset.digest) and len(dataset_input.dataset.digest) >= 32
    assert str(finished_training.output_dir) not in dataset_input.dataset.source  # the data, not the run
    assert run.data.tags["data.fingerprint"] == fingerprint
    version = client.get_model_version(finished_training.model_name, finished_training.model_version)
    assert version.tags["data.fingerprint"] == fingerprint and version.tags["data.sources"]
    assert "plots/loss_curve.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
