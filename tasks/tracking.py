"""MLflow bookkeeping around the stages: one run per flow run, params, artifacts."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from prefect.runtime import flow_run

from tasks.caching import side_effect_task
from tasks.types import DataPlan, GradientPlan, MemoryPlan, ResolvedArguments


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def experiment_id_of(client: mlflow.MlflowClient, name: str) -> str:
    """The experiment's id, created if missing, without `mlflow.set_experiment`'s process-global
    active experiment (which makes a later `start_run(run_id=...)` of another experiment fail in a
    long-lived process that runs several flows)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return client.get_experiment_by_name(name).experiment_id


@side_effect_task("open-mlflow-run")
def open_run(
    experiment_name: str, arguments: ResolvedArguments, existing_run_id: str | None = None, run_dir: str = ""
) -> str:
    """Create the run the workers report into (left RUNNING); params = the resolved arguments.

    With `existing_run_id` (a resumed run folder), that run is set RUNNING again and continues:
    one MLflow run per run folder, whichever flow runs trained into it.
    """
    client = mlflow.MlflowClient()
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "prefect.flow_run_name": str(flow_run.get_name() or ""),
        "streamvln.run_dir": run_dir,
    }
    if existing_run_id:
        previous = client.get_run(existing_run_id).data.tags.get("prefect.flow_run_ids", "")
        client.update_run(existing_run_id, status="RUNNING")
        tags["prefect.flow_run_ids"] = ",".join(filter(None, [previous, tags["prefect.flow_run_id"]]))
        for key, value in tags.items():
            client.set_tag(existing_run_id, key, value)
        return existing_run_id
    experiment_id = experiment_id_of(client, experiment_name)
    tags["prefect.flow_run_ids"] = tags["prefect.flow_run_id"]
    run = client.create_run(experiment_id, run_name=flow_run.get_name(), tags=tags)
    params = {f"model.{k}": v for k, v in arguments.model.items()}
    params |= {f"data.{k}": v for k, v in arguments.data.items()}
    params |= {f"training.{k}": v for k, v in arguments.training.items()}
    entries = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(entries), 100):  # the tracking API takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=entries[i : i + 100])
    return run.info.run_id


def close_run(run_id: str, succeeded: bool) -> None:
    mlflow.MlflowClient().set_terminated(run_id, "FINISHED" if succeeded else "FAILED")


@side_effect_task("log-plan-artifacts")
def log_plan(
    run_id: str,
    arguments: ResolvedArguments,
    data: DataPlan,
    gradients: GradientPlan,
    plan_path: str,
    memory: MemoryPlan | None = None,
    model_source: str | None = None,
) -> None:
    """Resolved config, data summary (lineage: sources + content fingerprint), the worker plan and
    the predicted per-GPU memory (to set beside the workers' measured peaks)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "resolved_arguments.json").write_text(
            json.dumps(arguments.model_dump(), indent=2, default=str)
        )
        (folder / "data_summary.json").write_text(json.dumps(data.model_dump(), indent=2))
        (folder / "parameter_counts.json").write_text(json.dumps(gradients.model_dump(), indent=2))
        if memory is not None:
            (folder / "memory_plan.json").write_text(json.dumps(memory.model_dump(), indent=2))
        client = mlflow.MlflowClient()
        client.log_artifacts(run_id, str(folder), artifact_path="plan")
        client.log_artifact(run_id, plan_path, artifact_path="plan")
        report = Path(tmp) / "validation_report.json"
        report.write_text(json.dumps(data.summary.get("report", {}), indent=2))
        client.log_artifact(run_id, str(report), artifact_path="data")
        client.set_tag(run_id, "data.fingerprint", data.fingerprint)
        if model_source:  # trained from a registered model: its URI and version
            client.set_tag(run_id, "model.source", model_source)
        client.set_tag(run_id, "data.sources", ",".join(data.summary["sources"]))
        client.log_metric(run_id, "data.samples", data.summary["samples"])
        for task, count in data.summary.get("samples_per_task", {}).items():
            client.log_metric(run_id, f"data.samples.{task}", count)
        client.log_metric(run_id, "model.trainable_parameters", gradients.counts["trainable"])
        if memory is not None:
            client.set_tag(run_id, "memory.strategy", memory.strategy)
            for key in ("parameter", "gradient", "optimizer", "buffer", "activation", "peak"):
                value = memory.estimate[f"{key}_bytes"]
                client.log_metric(run_id, f"memory.predicted_{key}_gib", value / 2**30)
