"""Which parameters train: `mm_tunable_parts` or the older LLaVA flags (STREAMVLN.md §5).

The decision replays the published StreamVLN/LLaVA-NeXT training script step by step, because
runs must train exactly the parameters the published recipe trains:

1. `--freeze_backbone`: everything under `model.` is frozen (decoder, embeddings, vision tower,
   projector, image_newline); `lm_head` keeps training.
2. No `--mm_tunable_parts` (legacy flags): `--tune_mm_mlp_adapter` / `--tune_mm_vision_resampler`
   freeze the whole model and re-enable the projector / resampler; `--freeze_mm_mlp_adapter` /
   `--freeze_mm_vision_resampler` freeze them; finally the vision tower trains iff
   `--unfreeze_mm_vision_tower`. Everything else keeps its state.
3. `--mm_tunable_parts a,b`: everything is frozen (so `--freeze_backbone` has no effect), then
   each listed part is unfrozen; `mm_vision_tower`, `mm_language_model` and `mm_lora_layer` are
   matched on parameter names exactly as published (`mm_language_model` is every name without
   "vision_tower", "mm_projector" or "vision_resampler": lm_head, embeddings, image_newline too).
4. `--lora_enable` (legacy flags only; the tunable-parts branch resets everything anyway): the
   LoRA wrapper leaves only LoRA weights (and `--lora_bias` biases) trainable, then the
   projector is re-enabled and the legacy flags apply as above (see `FreezingPlan._after_lora`).

`--unfreeze_language_model` is never read by the published code, so it is not read here either.
The decision works on parameter names only, so the flow can plan it on a meta-device model and
the worker applies the very same decision to the real one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

TUNABLE_PARTS = (
    "mm_mlp_adapter",
    "mm_vision_resampler",
    "mm_vision_tower",
    "mm_language_model",
    "mm_lora_layer",
)

# Module prefixes of the modules the published script addresses directly (`model.model`,
# `get_model().mm_projector`, `get_model().vision_resampler`, `get_vision_tower()`).
BACKBONE_PREFIX = "model."
PROJECTOR_PREFIX = "model.mm_projector."
RESAMPLER_PREFIX = "model.vision_resampler."
TOWER_PREFIX = "model.vision_tower."
LORA_KEY = "lora_"  # in every LoRA parameter name (lora_A, lora_B, ...)


def component(name: str) -> str:
    """The tunable part a parameter belongs to (for counts and reports)."""
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
    """`None` selects the legacy flags; any string (even empty) selects the tunable-parts branch.

    An empty string is kept as "no part": the published script then freezes everything, which
    preflight reports through `no_trainable_problem` instead of silently using the legacy flags.
    """
    if value is None:
        return None
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in parts if p not in TUNABLE_PARTS]
    if unknown:
        raise ValueError(
            f"--mm_tunable_parts: unknown part(s) {', '.join(unknown)}; "
            f"choose from {', '.join(TUNABLE_PARTS)}"
        )
    return parts


@dataclass(frozen=True)
class FreezingPlan:
    """The flags that decide what trains; `trains(name)` replays the published order per name.

    A plain frozen dataclass so the flow can log, compare and serialise it.
    """

    tunable_parts: tuple[str, ...] | None = None
    freeze_backbone: bool = False
    tune_mm_mlp_adapter: bool = False
    tune_mm_vision_resampler: bool = False
    freeze_mm_mlp_adapter: bool = False
    freeze_mm_vision_resampler: bool = False
    unfreeze_mm_vision_tower: bool = False
    lora_enable: bool = False
    lora_bias: str = "none"

    def trains(self, name: str) -> bool:
        """Whether parameter `name` has requires_grad after the published freezing steps.

        With LoRA, `name` is a name of the model under the peft wrapper (LoRA layers included).
        """
        if self.tunable_parts is not None:
            return self._tunable_parts_branch(name)
        trainable = True  # from_pretrained leaves every parameter trainable
        if self.freeze_backbone and name.startswith(BACKBONE_PREFIX):
            trainable = False
        if self.lora_enable:
            trainable = self._after_lora(name)
        if self.tune_mm_mlp_adapter or self.tune_mm_vision_resampler:
            trainable = False
        if self.tune_mm_mlp_adapter and name.startswith(PROJECTOR_PREFIX):
            trainable = True
        if self.tune_mm_vision_resampler and name.startswith(RESAMPLER_PREFIX):
            trainable = True
        if self.freeze_mm_mlp_adapter and name.startswith(PROJECTOR_PREFIX):
            trainable = False
        if self.freeze_mm_vision_resampler and name.startswith(RESAMPLER_PREFIX):
            trainable = False
        if name.startswith(TOWER_PREFIX):
            trainable = self.unfreeze_mm_vision_tower
        return trainable

    def _after_lora(self, name: str) -> bool:
        """Legacy flags with LoRA: `get_peft_model` leaves only the LoRA weights (and, per
        `--lora_bias`, biases) trainable; LLaVA's `initialize_vision_modules` then re-enables the
        projector and resampler "in case it is frozen by LoRA", before the legacy flags apply."""
        bias = name.endswith(".bias") and (
            self.lora_bias == "all" or (self.lora_bias == "lora_only" and name.endswith(".base_layer.bias"))
        )
        return LORA_KEY in name or bias or name.startswith((PROJECTOR_PREFIX, RESAMPLER_PREFIX))

    def _tunable_parts_branch(self, name: str) -> bool:
        parts = self.tunable_parts or ()
        multimodal = ("vision_tower", "mm_projector", "vision_resampler")
        return (
            ("mm_mlp_adapter" in parts and name.startswith(PROJECTOR_PREFIX))
            or ("mm_vision_resampler" in parts and name.startswith(RESAMPLER_PREFIX))
            or ("mm_vision_tower" in parts and "vision_tower" in name)
            or ("mm_language_model" in parts and not any(key in name for key in multimodal))
            or ("mm_lora_layer" in parts and "lora" in name)
        )

    def describe(self) -> str:
        """The deciding flags as command-line text, for logs and problem messages."""
        if self.tunable_parts is not None:
            return f"--mm_tunable_parts {','.join(self.tunable_parts)!r}"
        flags = [
            name
            for name in (
                "freeze_backbone",
                "tune_mm_mlp_adapter",
                "tune_mm_vision_resampler",
                "freeze_mm_mlp_adapter",
                "freeze_mm_vision_resampler",
                "unfreeze_mm_vision_tower",
            )
            if getattr(self, name)
        ]
        if self.lora_enable:
            flags.append("lora_enable")
        return " ".join(f"--{flag} true" for flag in flags) or "no freezing flags"


def freezing_plan(model_args, training_args) -> FreezingPlan:
    """The decision from the parsed ModelArguments / TrainingArguments (published field owners)."""
    return FreezingPlan(
        tunable_parts=parse_tunable_parts(model_args.mm_tunable_parts),
        freeze_backbone=bool(model_args.freeze_backbone),
        tune_mm_mlp_adapter=bool(model_args.tune_mm_mlp_adapter),
        tune_mm_vision_resampler=bool(model_args.tune_mm_vision_resampler),
        freeze_mm_mlp_adapter=bool(training_args.freeze_mm_mlp_adapter),
        freeze_mm_vision_resampler=bool(training_args.freeze_mm_vision_resampler),
        unfreeze_mm_vision_tower=bool(model_args.unfreeze_mm_vision_tower),
        lora_enable=bool(training_args.lora_enable),
        lora_bias=str(training_args.lora_bias),
    )


def trainable_parts(model_args, training_args) -> FreezingPlan:
    """Kept name for existing callers (`apply_freezing(model, trainable_parts(m, t))`)."""
    return freezing_plan(model_args, training_args)


def _names(names: Iterable[str] | nn.Module) -> list[str]:
    if isinstance(names, nn.Module):
        return [name for name, _ in names.named_parameters()]
    return list(names)


def trainable_names(names: Iterable[str] | nn.Module, plan: FreezingPlan) -> set[str]:
    """The parameter names `plan` trains, from names alone (a meta-device model is enough)."""
    return {name for name in _names(names) if plan.trains(name)}


def no_trainable_problem(names: Iterable[str] | nn.Module, plan: FreezingPlan) -> str | None:
    """Preflight: a problem string when the flags leave no parameter trainable, else None.

    The published script would start and fail inside the optimizer (or train nothing); saying
    so before weights load saves a launch.
    """
    if trainable_names(names, plan):
        return None
    return (
        f"{plan.describe()}: no parameter of this model would train (this model has no vision "
        "resampler and no LoRA layers). Fix: pass --mm_tunable_parts with mm_mlp_adapter, "
        "mm_vision_tower and/or mm_language_model, or drop --freeze_mm_mlp_adapter"
    )


def apply_freezing(model: nn.Module, plan: FreezingPlan) -> dict[str, int]:
    """Set requires_grad on every parameter from `plan`; returns parameter counts."""
    for name, param in model.named_parameters():
        param.requires_grad_(plan.trains(name))
    return parameter_counts(model)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable element counts, overall and per tunable part.

    Under DeepSpeed ZeRO-3 a loaded parameter holds only this rank's partition (`numel()` is 0);
    its full size is `ds_numel`, so the counts are the model's whatever the sharding.
    """
    counts = {"total": 0, "trainable": 0}
    for name, param in model.named_parameters():
        size = getattr(param, "ds_numel", param.numel())
        counts["total"] += size
        part = component(name)
        counts[f"total.{part}"] = counts.get(f"total.{part}", 0) + size
        if param.requires_grad:
            counts["trainable"] += size
            counts[f"trainable.{part}"] = counts.get(f"trainable.{part}", 0) + size
    return counts


def trained_parts(counts: dict[str, int]) -> list[str]:
    """Parts with at least one trainable element (a part may train only partly: freeze_backbone
    leaves lm_head alone of mm_language_model)."""
    return [part for part in TUNABLE_PARTS if counts.get(f"trainable.{part}")]
