"""Secrets (tokens, passwords, keys) travel in environment variables, never in files or logs.

A secret given as a flag (`--hub_token ...`) is moved into the environment variable the library
that needs it reads natively (`HF_TOKEN` for huggingface_hub), and the field is cleared, so it
never reaches plan.json, MLflow params and artifacts, Prefect parameters and results, logs, or
the `training_args.bin` the Trainer pickles into every checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

# Flag -> the environment variable its library reads when the flag is unset.
SECRET_FLAGS: dict[str, str] = {"hub_token": "HF_TOKEN"}
REDACTED = "<redacted>"


def is_secret(name: str) -> bool:
    return name in SECRET_FLAGS


def mask_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """A copy with every secret field's value replaced (None stays None: nothing to hide)."""
    return {k: (REDACTED if is_secret(k) and v is not None else v) for k, v in values.items()}


def split_secrets(flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(flags without secrets, environment variables carrying them)."""
    clean = {k: v for k, v in flags.items() if not is_secret(k)}
    env = {SECRET_FLAGS[k]: _reveal(v) for k, v in flags.items() if is_secret(k) and v is not None}
    return clean, env


def move_secrets_to_env(training_args) -> None:
    """Worker side: a secret passed on the command line goes to its environment variable."""
    for name, variable in SECRET_FLAGS.items():
        value = getattr(training_args, name, None)
        if value is not None:
            os.environ[variable] = _reveal(value)
            setattr(training_args, name, None)


def _reveal(value: Any) -> str:
    """pydantic SecretStr (what the flow's form holds) or a plain string."""
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)


def secrets_in_environment() -> list[str]:
    """Names (never values) of the secret variables this process has, for the run log."""
    return sorted(variable for variable in SECRET_FLAGS.values() if os.environ.get(variable))
