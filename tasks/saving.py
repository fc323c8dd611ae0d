"""Stage 10, Model Saving: check the saved folder loads, log it to MLflow, register a version."""

from __future__ import annotations

import mlflow
from prefect import get_run_logger, task

from streamvln_model.mlflow_model import log_checkpoint_model
from streamvln_model.modeling import StreamVLNForCausalLM
from tasks.parameters import RegistryConfig
from tasks.types import SavedModel, TrainResult


@task(name="model-saving")
def save_model(result: TrainResult, run_id: str, registry: RegistryConfig) -> SavedModel:
    StreamVLNForCausalLM.from_pretrained(result.output_dir)  # fails loudly on a broken save
    info = log_checkpoint_model(result.output_dir, run_id)
    version = mlflow.register_model(info.model_uri, registry.model_name)
    client = mlflow.MlflowClient()
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
