"""Secrets for a flow run: from the environment, else from Prefect Secret blocks; never parameters.

A deployment's parameters are stored by the Prefect server and shown in its UI, so S3 keys and
MLflow or Hugging Face tokens never go there. The process that runs the flow (a Prefect worker's
flow-run process) takes each variable below from its environment when set there (the worker's
environment, a work pool's job variables, a Kubernetes secret), and otherwise from the Prefect
Secret block of the given name, if one exists. The values land in this process's environment,
which the torchrun workers inherit; they are never logged, only the variables' names.
"""

from __future__ import annotations

import os

from prefect.blocks.system import Secret

from tasks.caching import stage_logger

# Environment variable -> the Secret block that holds it (create with
# `prefect block create secret` in the UI, or `Secret(value=...).save("streamvln-aws-secret-access-key")`).
SECRET_BLOCKS: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "streamvln-aws-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "streamvln-aws-secret-access-key",
    "AWS_SESSION_TOKEN": "streamvln-aws-session-token",
    "MLFLOW_TRACKING_TOKEN": "streamvln-mlflow-tracking-token",
    "MLFLOW_TRACKING_USERNAME": "streamvln-mlflow-tracking-username",
    "MLFLOW_TRACKING_PASSWORD": "streamvln-mlflow-tracking-password",
    "HF_TOKEN": "streamvln-hf-token",
}


def load_secret_blocks() -> dict[str, str]:
    """Fill the unset variables from their Secret blocks; returns variable -> where it came from."""
    sources = {}
    for variable, block in SECRET_BLOCKS.items():
        if os.environ.get(variable):
            sources[variable] = "environment"
            continue
        try:
            value = Secret.load(block, _sync=True).get()
        except ValueError:  # no block of that name
            continue
        os.environ[variable] = str(value)
        sources[variable] = f"secret block {block}"
    if sources:
        stage_logger().info(
            "secrets: %s", ", ".join(f"{variable} ({source})" for variable, source in sorted(sources.items()))
        )
    return sources
