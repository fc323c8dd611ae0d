"""Typed, serialisable results of the stage tasks (persisted by Prefect, read by later stages)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ResolvedArguments(BaseModel):
    flags: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]


class EnvironmentPlan(BaseModel):
    device: str
    world_size: int
    nproc_per_node: int
    nnodes: int
    compute_dtype: str
    worker_flags: dict[str, Any]
    deepspeed_config: dict[str, Any] | None = None


class ModelPlan(BaseModel):
    checkpoint: str
    config: dict[str, Any]
    total_parameters: int
    unexpected_weights: list[str]


class TokenizerPlan(BaseModel):
    path: str
    vocab_size: int
    image_token_id: int
    memory_token_id: int
    always_learned: list[int]


class VisionPlan(BaseModel):
    image_size: int
    patch_size: int
    patches_per_side: int
    tokens_per_frame: int
    pool_mode: str
    pool_stride: int


class GradientPlan(BaseModel):
    parts: list[str]
    counts: dict[str, int]


class DataPlan(BaseModel):
    index_path: str
    fingerprint: str
    summary: dict[str, Any]


class TrainerPlan(BaseModel):
    plan_path: str
    output_dir: str
    command: list[str]
    resume_from: str | None


class TrainResult(BaseModel):
    output_dir: str
    steps: int
    world_size: int
    first_loss: float | None
    last_loss: float | None
    losses: list[tuple[int, float]]


class SavedModel(BaseModel):
    output_dir: str
    model_uri: str
    registered_name: str
    version: str
    alias: str
