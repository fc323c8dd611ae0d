#!/usr/bin/env bash
# The project's test command: ./scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh

# Offline and without telemetry. MLflow only honours DO_NOT_TRACK=true, hence its own switch.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=1

exec .venv/bin/python -m pytest "$@"
