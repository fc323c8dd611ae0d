"""The ladder of cheaper strategies the advice climbs when a run cannot fit, cheapest first."""

from __future__ import annotations

from dataclasses import replace

from streamvln_model.training.memory.shape import ModelShape
from streamvln_model.training.memory.strategy import DS_DEFAULT_SUB_GROUP, Strategy

# The configs the advice names (relative to the repository root).
ZERO2_CONFIG = "configs/deepspeed/zero2.json"
ZERO3_CONFIG = "configs/deepspeed/zero3.json"
ZERO3_OFFLOAD_CONFIG = "configs/deepspeed/zero3_offload.json"


def lora_parts(shape: ModelShape) -> str:
    """`--mm_tunable_parts` of the LoRA rungs: the multimodal parts the run trains, plus the LoRA
    layers, without mm_language_model (which would train the LLM's own weights too)."""
    parts = [("mm_vision_tower", shape.tower_trains), ("mm_mlp_adapter", shape.projector_trains)]
    return ",".join([name for name, on in parts if on] + ["mm_lora_layer"])


def ladder(strategy: Strategy, lora_r: int, parts: str = "mm_lora_layer") -> list[tuple[str, Strategy]]:
    """Cheaper-first changes that lower memory: (flags, strategy), each with checkpointing on.

    Order of cost (what is given up): recomputation, then sharding optimizer states and gradients,
    then parameters, then CPU round trips, then training only adapters, then a quantized base.
    Rungs not above the run's own place on the ladder are skipped.
    """
    on = replace(strategy, gradient_checkpointing=True)
    lora = f"--lora_enable true --lora_r {lora_r} --mm_tunable_parts {parts}"
    zero = replace(on, sharding="zero", offload_optimizer=False, offload_params=False, overlap_comm=True)
    zero_sizes = {"reduce_bucket": None, "prefetch_bucket": None, "sub_group_size": DS_DEFAULT_SUB_GROUP}
    rungs = [
        ("--gradient_checkpointing true", on),
        (f"--deepspeed {ZERO2_CONFIG}", replace(zero, zero_stage=2, **zero_sizes)),
        (f"--deepspeed {ZERO3_CONFIG}", replace(zero, zero_stage=3, **zero_sizes)),
        (
            f"--deepspeed {ZERO3_OFFLOAD_CONFIG}",
            replace(zero, zero_stage=3, offload_optimizer=True, offload_params=True, **zero_sizes),
        ),
        (lora, replace(on, lora_r=lora_r, lora_llm_frozen=True)),
        (f"{lora} --bits 4", replace(on, lora_r=lora_r, lora_llm_frozen=True, bits=4)),
    ]
    checkpointing, *climbs = rungs
    chosen = [] if strategy.gradient_checkpointing else [checkpointing]
    return chosen + [(flags, rung) for flags, rung in climbs if rung.rank > strategy.rank]


def _with_bucket_defaults(strategy: Strategy, hidden: int) -> Strategy:
    """Ladder rungs use the repo's DeepSpeed configs, whose bucket sizes are "auto" (HF: h², 0.9h²)."""
    if strategy.sharding != "zero" or strategy.reduce_bucket is not None:
        return strategy
    return replace(strategy, reduce_bucket=hidden * hidden, prefetch_bucket=int(0.9 * hidden * hidden))
