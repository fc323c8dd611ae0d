"""Per-GPU memory of a training run, predicted before launch from the meta-device model.

By concern: `shape` (what the plan reads from the model and the flags), `strategy` (how the run
shards and what it trains), `estimate` (the bytes per GPU, with the formulas and their sources
in its module doc), `ladder` (cheaper strategies, cheapest first), `report` (the verdict against
`--gpu_memory_gb`, the table rows, and the entry points `plan_memory` / `memory_problems`).
docs/PERFORMANCE.md explains the numbers.
"""

from streamvln_model.training.memory.estimate import (
    FP32,
    GIB,
    Estimate,
    Tensors,
    decoder_layer_activation_bytes,
    encoder_layer_activation_bytes,
    estimate,
    gib,
    lora_parameters,
    parameter_layout,
    quantized_bytes_per_param,
)
from streamvln_model.training.memory.ladder import ladder, lora_parts
from streamvln_model.training.memory.report import (
    MemoryReport,
    memory_problems,
    plan_memory,
    report,
    usable_bytes,
)
from streamvln_model.training.memory.shape import (
    LABEL_TOKENS_PER_TURN,
    TEXT_BASE_TOKENS,
    TURN_TOKENS,
    ModelShape,
    Precision,
    Workload,
    model_shape,
    workload_of,
)
from streamvln_model.training.memory.strategy import Strategy, strategy_of

__all__ = [
    "FP32",
    "GIB",
    "LABEL_TOKENS_PER_TURN",
    "TEXT_BASE_TOKENS",
    "TURN_TOKENS",
    "Estimate",
    "MemoryReport",
    "ModelShape",
    "Precision",
    "Strategy",
    "Tensors",
    "Workload",
    "decoder_layer_activation_bytes",
    "encoder_layer_activation_bytes",
    "estimate",
    "gib",
    "ladder",
    "lora_parameters",
    "lora_parts",
    "memory_problems",
    "model_shape",
    "parameter_layout",
    "plan_memory",
    "quantized_bytes_per_param",
    "report",
    "strategy_of",
    "usable_bytes",
    "workload_of",
]
