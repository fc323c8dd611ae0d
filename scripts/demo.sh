#!/usr/bin/env bash
# README command 1: set up the environment (idempotent) and run the end-to-end demo:
# synthetic data + tiny checkpoint -> the real Prefect flow (2 torchrun workers) -> MLflow.
# Extra arguments go to `streamvln demo` (e.g. --workdir DIR --json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
exec .venv/bin/streamvln demo "$@"
