"""Which parameters train: `mm_tunable_parts` or the older LLaVA flags (STREAMVLN.md §5).

Works on parameter names only, so the flow can plan it on a meta-device model and the worker
applies the very same decision to the real one.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

TUNABLE_PARTS = (
    "mm_mlp_adapter",
    "mm_vision_resampler",
    "mm_vision_tower",
    "mm_language_model",
    "mm_lora_layer",
)


def component(name: str) -> str:
    """The tunable part a parameter belongs to."""
    if "lora_" in name:
        return "mm_lora_layer"
    if "vision_tower" in name:
        return "mm_vision_tower"
    if "mm_projector" in name:
        return "mm_mlp_adapter"
    if "vision_resampler" in name:
        return "mm_vision_resampler"
    return "mm_language_model"


def parse_tunable_parts(value: str | None) -> tuple[str, ...] | None:
    if value is None or not value.strip():
        return None
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in parts if p not in TUNABLE_PARTS]
    if unknown:
        raise ValueError(
            f"--mm_tunable_parts: unknown part(s) {', '.join(unknown)}; "
            f"choose from {', '.join(TUNABLE_PARTS)}"
        )
    return parts


def trainable_parts(model_args, training_args) -> tuple[str, ...]:
    """The parts to unfreeze; `mm_tunable_parts` overrides the older flags when given."""
    parts = parse_tunable_parts(model_args.mm_tunable_parts)
    if parts is not None:
        return parts
    if model_args.tune_mm_mlp_adapter:
        return ("mm_mlp_adapter",)
    chosen = [] if model_args.freeze_backbone else ["mm_language_model"]
    if not training_args.freeze_mm_mlp_adapter:
        chosen.append("mm_mlp_adapter")
    if model_args.unfreeze_mm_vision_tower:
        chosen.append("mm_vision_tower")
    return tuple(chosen)


def trainable_names(names: Iterable[str], parts: tuple[str, ...]) -> set[str]:
    return {n for n in names if component(n) in parts}


def apply_freezing(model: nn.Module, parts: tuple[str, ...]) -> dict[str, int]:
    """Freeze everything, unfreeze the named parts; returns parameter counts."""
    chosen = trainable_names((n for n, _ in model.named_parameters()), parts)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return parameter_counts(model)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    counts = {"total": 0, "trainable": 0}
    for name, param in model.named_parameters():
        counts["total"] += param.numel()
        part = component(name)
        counts[f"total.{part}"] = counts.get(f"total.{part}", 0) + param.numel()
        if param.requires_grad:
            counts["trainable"] += param.numel()
            counts[f"trainable.{part}"] = counts.get(f"trainable.{part}", 0) + param.numel()
    return counts
