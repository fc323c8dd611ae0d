"""Typed, serialisable results of the stage tasks (persisted by Prefect, read by later stages).

Results are stored as JSON and read back only as one of the models listed in `RESULT_TYPES`
(see `tasks.caching.StageResultSerializer`): plain data, never code. Free-form fields are
`JsonObject`s, normalised to JSON values when the model is built, so a plan computed in this
run is equal to the same plan read back from the cache (a tuple would otherwise come back as a
list, a Path as a str).
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import to_jsonable_python


def _json_values(value: dict[str, Any]) -> dict[str, Any]:
    """JSON's view of `value`; unknown objects become `str(obj)`, as in plan.json."""
    return to_jsonable_python(value, fallback=str)


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_values)]


class StageResult(BaseModel):
    """Base of every stage result: unknown fields are refused, also when read from the cache."""

    model_config = ConfigDict(extra="forbid")


class ResolvedArguments(StageResult):
    flags: JsonObject
    model: JsonObject
    data: JsonObject
    training: JsonObject


class EnvironmentPlan(StageResult):
    device: str
    world_size: int
    nproc_per_node: int
    nnodes: int
    compute_dtype: str
    worker_flags: JsonObject
    substitutions: list[str] = []
    deepspeed_config: JsonObject | None = None


class ModelPlan(StageResult):
    checkpoint: str
    config: JsonObject
    total_parameters: int
    unexpected_weights: list[str]


class TokenizerPlan(StageResult):
    path: str
    vocab_size: int
    image_token_id: int
    memory_token_id: int
    always_learned: list[int]


class VisionPlan(StageResult):
    image_size: int
    patch_size: int
    patches_per_side: int
    tokens_per_frame: int
    pool_mode: str
    pool_stride: int


class GradientPlan(StageResult):
    parts: list[str]
    counts: dict[str, int]


class MemoryPlan(StageResult):
    """Predicted per-GPU memory of the run (streamvln_model/training/memory/) and the verdict.

    `fits` is None without `--gpu_memory_gb`; `rows` is the table the UI and MLflow show (the run
    first, then each cheaper-first change), `estimate` the run's full breakdown in bytes.
    """

    strategy: str
    world_size: int
    sequence_length: int
    gpu_memory_gb: float | None
    usable_bytes: int | None
    peak_bytes: int
    fits: bool | None
    cheapest_fit: str | None
    estimate: JsonObject
    rows: list[JsonObject]


class DataPlan(StageResult):
    index_path: str
    fingerprint: str
    summary: JsonObject


class TrainerPlan(StageResult):
    plan_path: str
    output_dir: str
    command: list[str]
    resume_from: str | None


class TrainResult(StageResult):
    output_dir: str
    steps: int
    world_size: int
    first_loss: float | None
    last_loss: float | None
    losses: list[tuple[int, float]]


class SavedModel(StageResult):
    output_dir: str
    model_uri: str
    registered_name: str
    version: str
    alias: str


class Plans(NamedTuple):
    """What the planning stages decided (all cached and keyed on content): stages 1-7's results."""

    arguments: ResolvedArguments
    environment: EnvironmentPlan
    model: ModelPlan
    tokenizer: TokenizerPlan
    vision: VisionPlan
    gradients: GradientPlan
    memory: MemoryPlan
    data: DataPlan


# The only classes a cached or persisted result may decode to (by class name).
RESULT_TYPES: dict[str, type[StageResult]] = {
    cls.__name__: cls
    for cls in (
        ResolvedArguments,
        EnvironmentPlan,
        ModelPlan,
        TokenizerPlan,
        VisionPlan,
        GradientPlan,
        MemoryPlan,
        DataPlan,
        TrainerPlan,
        TrainResult,
        SavedModel,
    )
}
