"""What a person sees of a training run: Prefect artifacts on the flow run, lineage in MLflow.

A flow run page in Prefect answers "where are the results?" (`mlflow-run`: a link to the MLflow run
and the registered model), "did it learn?" (`loss-curve`: the curve as an image) and "with what
settings?" (`training-parameters`: the resolved arguments, secrets masked). MLflow answers "on which
data?": the run gets a dataset input whose digest is the data index's content fingerprint, and the
registered model version is tagged with the same digest and sources.

How each artifact renders was checked in a real browser against Prefect's UI (both the default V2
UI and V1): a markdown image with a `data:` URI is shown, so the loss curve travels inside the
artifact and needs no second server that the viewer's browser can reach (`tests/test_ui_screenshots.py`).

These are plain functions: called inside a flow or task run, Prefect attaches the artifacts to it;
called outside any run they are created unattached. They never import the training library.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from streamvln_model.config.secrets import mask_secrets

MLFLOW_RUN_KEY = "mlflow-run"
LOSS_CURVE_KEY = "loss-curve"
PARAMETERS_KEY = "training-parameters"
LOSS_CURVE_PATH = "plots/loss_curve.png"
DATASET_NAME = "streamvln-navigation"
# MLflow stores a dataset digest in a 36-character column (mlflow.utils.validation
# MAX_DATASET_DIGEST_SIZE); the full sha256 fingerprint goes into the dataset profile.
DIGEST_LENGTH = 36
LINEAGE_TAG_PREFIX = "data."
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


# --- Links -------------------------------------------------------------------------------------
def is_tracking_server(tracking_uri: str) -> bool:
    """True for an MLflow server a browser can open (http/https); False for sqlite:, file:, paths."""
    return urlsplit(tracking_uri).scheme in ("http", "https")


def _server(tracking_uri: str) -> str:
    return tracking_uri.rstrip("/")


def run_page_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run (hash routing, as the MLflow UI links runs itself).

    MLflow 3's UI opens in its "GenAI" mode unless told otherwise; `workflowType=machine_learning`
    lands the reader in "Model training" mode, whose side bar lists runs and models.
    """
    return f"{_server(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def model_version_url(tracking_uri: str, model_name: str, version: str | int) -> str:
    return f"{_server(tracking_uri)}/#/models/{quote(model_name, safe='')}/versions/{version}"


def mlflow_run_markdown(
    run_id: str,
    tracking_uri: str,
    experiment_id: str,
    model_name: str | None = None,
    model_version: str | int | None = None,
    model_uri: str | None = None,
) -> str:
    """Markdown that leads to the run (and model): a link on a server, a command for a local store."""
    lines = ["# MLflow", ""]
    if is_tracking_server(tracking_uri):
        lines.append(f"**Run:** [{run_id}]({run_page_url(tracking_uri, experiment_id, run_id)})")
    else:
        # A local store has no web page until someone serves it; say exactly how.
        lines += [
            f"**Run:** `{run_id}` (experiment `{experiment_id}`) in the local store `{tracking_uri}`.",
            "",
            "Open it with:",
            "",
            "```",
            f"mlflow ui --backend-store-uri {tracking_uri}",
            "```",
            "",
            f"then `{run_page_url('http://127.0.0.1:5000', experiment_id, run_id)}`.",
        ]
    if model_name and model_version is not None:
        label = f"{model_name} version {model_version}"
        if is_tracking_server(tracking_uri):
            label = f"[{label}]({model_version_url(tracking_uri, model_name, model_version)})"
        lines += ["", f"**Registered model:** {label}"]
    if model_uri:
        lines += ["", f'**Load with:** `mlflow.pyfunc.load_model("{model_uri}")`']
    lines += ["", f"Tracking URI: `{tracking_uri}`"]
    return "\n".join(lines) + "\n"


def publish_mlflow_link(
    run_id: str,
    tracking_uri: str,
    model_name: str | None = None,
    model_version: str | int | None = None,
    model_uri: str | None = None,
) -> None:
    """Prefect artifact `mlflow-run`: where the run's metrics, artifacts and model live."""
    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    markdown = mlflow_run_markdown(run_id, tracking_uri, experiment_id, model_name, model_version, model_uri)
    create_markdown_artifact(markdown, key=MLFLOW_RUN_KEY, description="The MLflow run of this training")


# --- Loss curve --------------------------------------------------------------------------------
def render_loss_curve(losses: Sequence[tuple[int, float]]) -> bytes:
    """PNG of training loss over optimizer steps.

    Uses `matplotlib.figure.Figure` directly (Agg canvas, no pyplot): no global backend or figure
    registry is touched, so it is safe in a long-lived flow process and without a display.
    """
    if not losses:
        raise ValueError("losses is empty: no (step, loss) pair was logged, so there is no curve to draw")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [int(step) for step, _ in losses]
    values = [float(value) for _, value in losses]
    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(steps, values, marker="o" if len(steps) <= 50 else None, markersize=3, linewidth=1.5)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_title("Training loss")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def loss_curve_markdown(png: bytes, losses: Sequence[tuple[int, float]]) -> str:
    """The curve embedded as a data: URI, so the artifact needs no server the viewer can reach."""
    encoded = base64.b64encode(png).decode("ascii")
    first, last = losses[0], losses[-1]
    return (
        "# Training loss\n\n"
        f"![training loss](data:image/png;base64,{encoded})\n\n"
        f"Step {first[0]}: {first[1]:.4f} -> step {last[0]}: {last[1]:.4f} ({len(losses)} points)\n"
    )


def publish_loss_curve(run_id: str, losses: list[tuple[int, float]], tracking_uri: str | None = None) -> None:
    """Log the curve to the MLflow run (`plots/loss_curve.png`) and show it in Prefect (`loss-curve`)."""
    png = render_loss_curve(losses)
    client = mlflow.MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(LOSS_CURVE_PATH).name
        path.write_bytes(png)
        client.log_artifact(run_id, str(path), artifact_path=str(Path(LOSS_CURVE_PATH).parent))
    create_markdown_artifact(
        loss_curve_markdown(png, losses), key=LOSS_CURVE_KEY, description="Training loss per optimizer step"
    )


# --- Data lineage ------------------------------------------------------------------------------
def dataset_entity(
    fingerprint: str, sources: Sequence[str], samples: int, name: str = DATASET_NAME
) -> Dataset:
    """MLflow's dataset record: digest = the index fingerprint (cut to MLflow's 36 characters),
    source = the data locations, profile = sample count and the full fingerprint."""
    if not fingerprint:
        raise ValueError("fingerprint is empty: pass the data index's content hash (DataPlan.fingerprint)")
    if not sources:
        raise ValueError("sources is empty: pass the data folders/URIs the index was built from")
    uris = [str(source) for source in sources]
    remote = {urlsplit(uri).scheme for uri in uris} - {""}
    source_type = remote.pop() if len(remote) == 1 and all(urlsplit(u).scheme for u in uris) else "local"
    return Dataset(
        name=name,
        digest=fingerprint[:DIGEST_LENGTH],
        source_type=source_type,
        source=json.dumps({"uris": uris}),
        profile=json.dumps({"samples": int(samples), "fingerprint": fingerprint}),
    )


def log_dataset_inputs(
    run_id: str,
    fingerprint: str,
    sources: list[str],
    samples: int,
    context: str = "training",
    tracking_uri: str | None = None,
) -> None:
    """The run's dataset input (MLflow UI: the run's "Datasets used" and the experiment's dataset
    filter), so two runs can be compared by the data they saw."""
    dataset = dataset_entity(fingerprint, sources, samples)
    tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
    mlflow.MlflowClient(tracking_uri).log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])


def lineage_tags(fingerprint: str, sources: Sequence[str], name: str = DATASET_NAME) -> dict[str, str]:
    """Tags naming the data a model was trained on (MLflow registry values are at most 5000 chars)."""
    return {
        f"{LINEAGE_TAG_PREFIX}dataset": name,
        f"{LINEAGE_TAG_PREFIX}digest": fingerprint[:DIGEST_LENGTH],
        f"{LINEAGE_TAG_PREFIX}fingerprint": fingerprint,
        f"{LINEAGE_TAG_PREFIX}sources": ",".join(str(s) for s in sources)[:5000],
    }


def record_version_lineage(
    model_name: str,
    version: str | int,
    fingerprint: str,
    sources: list[str],
    tracking_uri: str | None = None,
) -> None:
    """Name the training data on the registered model version (and its logged model).

    MLflow 3 takes dataset inputs only on runs: a model version has no inputs of its own (it
    reaches them through its source run), and a logged model links datasets only through metrics.
    So the version, and the logged model it was registered from, carry the digest and sources as
    tags, visible on the version page and searchable (`tags.\\`data.digest\\` = '...'`).
    """
    client = mlflow.MlflowClient(tracking_uri)
    tags = lineage_tags(fingerprint, sources)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, value)
    model_id = logged_model_id(client.get_model_version(model_name, str(version)))
    if model_id:
        client.set_logged_model_tags(model_id, tags)


def logged_model_id(version: ModelVersion) -> str | None:
    """The logged model a version was registered from.

    Over REST `ModelVersion.model_id` is always None (MLflow 3.17's proto does not carry it), but a
    version registered from a logged model has `source = "models:/<model_id>"`, while a registry
    URI names a model (`models:/<name>/<version>`, `models:/<name>@<alias>`).
    """
    if version.model_id:
        return version.model_id
    prefix = "models:/"
    rest = (version.source or "").removeprefix(prefix)
    if (version.source or "").startswith(prefix) and rest and "/" not in rest and "@" not in rest:
        return rest
    return None


# --- Parameters --------------------------------------------------------------------------------
def parameter_rows(arguments: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """(group, name, value) rows, sorted, with every secret value masked."""
    rows = []
    for group, values in arguments.items():
        for name, value in sorted(mask_secrets(dict(values)).items()):
            rows.append({"group": group, "name": name, "value": _display(value)})
    return rows


def _display(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def publish_parameters(arguments: dict[str, dict]) -> None:
    """Prefect table artifact `training-parameters`: the resolved arguments a run trained with."""
    create_table_artifact(
        parameter_rows(arguments), key=PARAMETERS_KEY, description="Resolved training arguments"
    )
