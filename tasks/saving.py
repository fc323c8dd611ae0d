"""Stage 10, Model Saving: check the saved folder's files, log it to MLflow, register a version.

The flow process never loads weights (a 7B model is ~15 GB): the worker's rank 0 already
reloaded the folder and compared logits with the trained model before exiting
(`streamvln_model.checkpoint.reload_check.verify_saved_model`). Here only safetensors headers
are read, against config.json (checkpoint/headers.py), and the pyfunc is logged from the files.
A LoRA or projector-only save (checkpoint/loading.py) is checked against its base checkpoint's
headers, and the base travels with the pyfunc.
"""

from __future__ import annotations

import mlflow
from prefect import get_run_logger

from streamvln_model.checkpoint.headers import check_saved_files
from streamvln_model.registry.pyfunc import log_checkpoint_model
from tasks.caching import side_effect_task
from tasks.parameters import TrackingConfig
from tasks.reporting import record_version_lineage
from tasks.types import DataPlan, SavedModel, TrainResult


@side_effect_task("model-saving")
def save_model(
    result: TrainResult, run_id: str, registry: TrackingConfig, data: DataPlan | None = None
) -> SavedModel:
    check_saved_files(result.output_dir)  # names and shapes from the headers; no tensor is read
    info = log_checkpoint_model(result.output_dir, run_id)
    version = mlflow.register_model(info.model_uri, registry.model_name)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(registry.model_name, version.version, "trained_steps", str(result.steps))
    if data is not None:  # lineage: the data it was trained on, as on the run
        record_version_lineage(
            registry.model_name, version.version, data.fingerprint, data.summary["sources"]
        )
    client.set_registered_model_alias(registry.model_name, registry.alias, version.version)
    uri = f"models:/{registry.model_name}@{registry.alias}"
    get_run_logger().info("registered %s version %s as %s", registry.model_name, version.version, uri)
    return SavedModel(
        output_dir=result.output_dir,
        model_uri=uri,
        registered_name=registry.model_name,
        version=str(version.version),
        alias=registry.alias,
    )
