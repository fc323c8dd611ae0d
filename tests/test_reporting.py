"""tasks.reporting against a real MLflow server and Prefect's API: what each report holds.

(How the Prefect and MLflow UIs render them is tests/test_ui_screenshots.py.)
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from tasks.reporting import (
    DATASET_NAME,
    DIGEST_LENGTH,
    LOSS_CURVE_KEY,
    LOSS_CURVE_PATH,
    MLFLOW_RUN_KEY,
    PARAMETERS_KEY,
    dataset_entity,
    logged_model_id,
    mlflow_run_markdown,
    parameter_rows,
    render_loss_curve,
    run_page_url,
)
from tests.reporting_demo import FINGERPRINT, SECRET, FinishedRun, reporting_demo, synthetic_losses

SOURCES = ["/data/r2r", "/data/envdrop"]


@pytest.fixture(scope="module")
def demo_run(mlflow_server, prefect_harness) -> FinishedRun:
    return reporting_demo(mlflow_server.uri, SOURCES, "reporting-test-model")


@pytest.fixture(scope="module")
def artifacts(demo_run) -> dict[str, object]:
    """The flow run's Prefect artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[demo_run.flow_run_id]))
        )
    return {artifact.key: artifact for artifact in found}


def test_flow_run_gets_the_three_reports(artifacts):
    assert {MLFLOW_RUN_KEY, LOSS_CURVE_KEY, PARAMETERS_KEY} <= set(artifacts)
    assert artifacts[MLFLOW_RUN_KEY].type == "markdown"
    assert artifacts[LOSS_CURVE_KEY].type == "markdown"
    assert artifacts[PARAMETERS_KEY].type == "table"


def test_mlflow_link_points_at_the_run_and_version(demo_run, artifacts):
    markdown = artifacts[MLFLOW_RUN_KEY].data
    url = run_page_url(demo_run.tracking_uri, demo_run.experiment_id, demo_run.mlflow_run_id)
    assert f"]({url})" in markdown
    assert f"/#/models/{demo_run.model_name}/versions/{demo_run.model_version})" in markdown


def test_loss_curve_in_prefect_is_the_png_logged_to_mlflow(demo_run, artifacts, tmp_path):
    embedded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", artifacts[LOSS_CURVE_KEY].data)
    assert embedded, artifacts[LOSS_CURVE_KEY].data[:200]
    png = base64.b64decode(embedded.group(1))
    logged = mlflow.artifacts.download_artifacts(
        run_id=demo_run.mlflow_run_id,
        artifact_path=LOSS_CURVE_PATH,
        dst_path=str(tmp_path),
        tracking_uri=demo_run.tracking_uri,
    )
    assert Path(logged).read_bytes() == png
    assert Image.open(io.BytesIO(png)).size == (640, 360)


def test_parameters_table_masks_secrets(artifacts):
    rows = json.loads(artifacts[PARAMETERS_KEY].data)
    by_name = {(row["group"], row["name"]): row["value"] for row in rows}
    assert by_name[("training", "hub_token")] == "<redacted>"
    assert by_name[("training", "report_to")] == '["none"]'
    assert by_name[("model", "num_history")] == "8"
    assert all(SECRET not in str(artifact.data) for artifact in artifacts.values())


def test_run_has_the_dataset_input(demo_run):
    run = mlflow.MlflowClient(demo_run.tracking_uri).get_run(demo_run.mlflow_run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert (dataset.name, dataset.digest) == (DATASET_NAME, FINGERPRINT[:DIGEST_LENGTH])
    assert json.loads(dataset.source) == {"uris": SOURCES}
    assert json.loads(dataset.profile) == {"samples": 42, "fingerprint": FINGERPRINT}
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "training")}


def test_model_version_and_logged_model_carry_the_lineage(demo_run):
    client = mlflow.MlflowClient(demo_run.tracking_uri)
    version = client.get_model_version(demo_run.model_name, demo_run.model_version)
    expected = {
        "data.dataset": DATASET_NAME,
        "data.digest": FINGERPRINT[:DIGEST_LENGTH],
        "data.fingerprint": FINGERPRINT,
        "data.sources": ",".join(SOURCES),
    }
    assert expected.items() <= version.tags.items()
    assert expected.items() <= client.get_logged_model(logged_model_id(version)).tags.items()
    found = client.search_model_versions(f"tags.`data.digest` = '{FINGERPRINT[:DIGEST_LENGTH]}'")
    assert [(v.name, v.version) for v in found] == [(demo_run.model_name, demo_run.model_version)]


# --- Pure functions -----------------------------------------------------------------------------
def test_local_store_markdown_says_how_to_open_it():
    markdown = mlflow_run_markdown("abc123", "sqlite:////srv/mlflow.db", "7", "streamvln", 3)
    assert "mlflow ui --backend-store-uri sqlite:////srv/mlflow.db" in markdown
    assert "http://127.0.0.1:5000/#/experiments/7/runs/abc123" in markdown
    assert "](" not in markdown  # no link into a server that does not exist
    assert "streamvln version 3" in markdown


def test_server_markdown_links_run_and_model():
    markdown = mlflow_run_markdown(
        "abc123", "https://mlflow.example/", "7", "stream vln", 3, "models:/x@champion"
    )
    assert "](https://mlflow.example/#/experiments/7/runs/abc123?workflowType=machine_learning)" in markdown
    assert "](https://mlflow.example/#/models/stream%20vln/versions/3)" in markdown
    assert 'mlflow.pyfunc.load_model("models:/x@champion")' in markdown


def test_loss_curve_needs_points():
    with pytest.raises(ValueError, match="losses is empty"):
        render_loss_curve([])
    assert render_loss_curve(synthetic_losses(2)).startswith(b"\x89PNG")


def test_dataset_source_type_follows_the_uris():
    assert dataset_entity("f" * 64, ["s3://b/r2r", "s3://b/envdrop"], 1).source_type == "s3"
    assert dataset_entity("f" * 64, ["s3://b/r2r", "/local/envdrop"], 1).source_type == "local"
    with pytest.raises(ValueError, match="sources is empty"):
        dataset_entity("f" * 64, [], 1)
    with pytest.raises(ValueError, match="fingerprint is empty"):
        dataset_entity("", ["/data"], 1)


def test_parameter_rows_mask_only_set_secrets():
    rows = parameter_rows({"training": {"hub_token": None, "seed": 3}, "data": {"video_folder": ["a", "b"]}})
    assert rows == [
        {"group": "training", "name": "hub_token", "value": ""},
        {"group": "training", "name": "seed", "value": "3"},
        {"group": "data", "name": "video_folder", "value": '["a", "b"]'},
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("models:/m-0123abcd", "m-0123abcd"),
        ("models:/streamvln/3", None),
        ("models:/streamvln@champion", None),
        ("runs:/abc/model", None),
        ("s3://bucket/model", None),
    ],
)
def test_logged_model_id_from_version_source(source, expected):
    from mlflow.entities.model_registry import ModelVersion

    assert logged_model_id(ModelVersion("streamvln", "1", 0, source=source)) == expected
