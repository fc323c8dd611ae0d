"""A tiny Prefect flow that publishes every report of `tasks.reporting`, without training.

It opens a real MLflow run, logs a synthetic loss curve as the `loss` metric (as the workers'
`MlflowRunCallback` does), records lineage and publishes the Prefect artifacts, so the reporting
tests need neither a model nor a torchrun worker.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import mlflow
from prefect import flow
from prefect.artifacts import create_progress_artifact
from prefect.runtime import flow_run

from tasks.reporting import (
    DATASET_NAME,
    log_dataset_inputs,
    publish_loss_curve,
    publish_mlflow_link,
    publish_parameters,
    record_version_lineage,
)

FINGERPRINT = "5f2c" * 16  # a sha256-long hex fingerprint
SECRET = "hf_demo_secret_value"
PROGRESS_KEY = "training-progress"


@dataclass(frozen=True)
class FinishedRun:
    """What the UI tests need of a finished training flow run."""

    flow_run_id: str
    mlflow_run_id: str
    tracking_uri: str
    experiment_id: str
    model_name: str | None = None
    model_version: str | None = None


def synthetic_losses(steps: int = 30) -> list[tuple[int, float]]:
    return [(step, 0.2 + 2.4 * math.exp(-step / 8)) for step in range(1, steps + 1)]


@flow(name="reporting-demo")
def reporting_demo(tracking_uri: str, sources: list[str], model_name: str) -> FinishedRun:
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("reporting-demo")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("reporting-demo")
    run_id = client.create_run(experiment_id, run_name=flow_run.get_name()).info.run_id
    losses = synthetic_losses()
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric("loss", value, now + step, step) for step, value in losses]
    metrics += [mlflow.entities.Metric("learning_rate", 2e-5, now + step, step) for step, _ in losses]
    metrics += [mlflow.entities.Metric("train_loss", losses[-1][1], now, losses[-1][0])]
    client.log_batch(run_id, metrics=metrics)

    publish_parameters(
        {
            "model": {"model_name_or_path": "/ckpt/tiny", "num_history": 8},
            "training": {"learning_rate": 2e-5, "hub_token": SECRET, "report_to": ["none"]},
        }
    )
    log_dataset_inputs(run_id, FINGERPRINT, sources, samples=42, tracking_uri=tracking_uri)
    create_progress_artifact(100.0, key=PROGRESS_KEY, description="Training progress")
    publish_loss_curve(run_id, losses, tracking_uri=tracking_uri)

    model = client.create_logged_model(experiment_id, name="demo", source_run_id=run_id)
    client.create_registered_model(model_name)
    version = client.create_model_version(
        model_name, source=f"models:/{model.model_id}", run_id=run_id, model_id=model.model_id
    ).version
    record_version_lineage(model_name, version, FINGERPRINT, sources, tracking_uri=tracking_uri)
    publish_mlflow_link(run_id, tracking_uri, model_name=model_name, model_version=version)
    client.set_terminated(run_id, "FINISHED")
    return FinishedRun(
        flow_run_id=str(flow_run.get_id()),
        mlflow_run_id=run_id,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        model_name=model_name,
        model_version=str(version),
    )


__all__ = ["DATASET_NAME", "FINGERPRINT", "FinishedRun", "reporting_demo", "synthetic_losses"]
