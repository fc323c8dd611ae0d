"""The memory plan's strategy: how the run shards (config.strategies.read_strategy, the one reader of
the DeepSpeed/FSDP configs) plus the training flags that change memory (LoRA, bits, checkpointing,
optimizer, attention kernel)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from streamvln_model.config.strategies import ShardingStrategy, read_strategy

# DeepSpeed defaults when the JSON omits a size, and the HF integration's "auto" values.
DS_DEFAULT_REDUCE_BUCKET = 500_000_000
DS_DEFAULT_PREFETCH_BUCKET = 50_000_000
DS_DEFAULT_SUB_GROUP = 1_000_000_000


@dataclass(frozen=True)
class Strategy:
    """How the run shards and what it trains, from the flags and the DeepSpeed/FSDP config."""

    sharding: Literal["ddp", "zero", "fsdp"] = "ddp"
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    fsdp_reshard_after_forward: bool = True
    lora_r: int | None = None
    lora_dropout: float = 0.0
    # The ladder's LoRA rungs also set --mm_tunable_parts so that the LLM's own weights freeze;
    # a run's own --lora_enable leaves that to its freezing flags (mm_language_model trains them).
    lora_llm_frozen: bool = False
    bits: int = 16
    double_quant: bool = True
    gradient_checkpointing: bool = False
    optim: str = "adamw_torch"
    attn_implementation: str = "sdpa"
    overlap_comm: bool = False
    reduce_bucket: int | None = None  # elements; None = DeepSpeed's default
    prefetch_bucket: int | None = None
    sub_group_size: int | None = None

    @property
    def label(self) -> str:
        if self.sharding == "zero":
            base = f"ZeRO-{self.zero_stage}"
            offloaded = [
                n for n, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on
            ]
            base += f" + CPU offload ({', '.join(offloaded)})" if offloaded else ""
        elif self.sharding == "fsdp":
            base = "FSDP full shard" if self.fsdp_reshard_after_forward else "FSDP shard-grad-op"
            base += " + CPU offload" if self.offload_params else ""
        else:
            base = "DDP"
        if self.bits < 16:
            base = (
                f"{self.bits}-bit QLoRA r={self.lora_r}, {base}"
                if self.lora_r
                else f"{self.bits}-bit, {base}"
            )
        elif self.lora_r:
            base = f"LoRA r={self.lora_r}, {base}"
        return base + (", gradient checkpointing" if self.gradient_checkpointing else "")

    @property
    def rank(self) -> int:
        """Position on the cost ladder (more memory saved, more given up); the advice only climbs."""
        if self.bits < 16:
            return 6
        if self.lora_r:
            return 5
        if self.offload_optimizer or self.offload_params:
            return 4
        if (self.sharding == "zero" and self.zero_stage == 3) or (
            self.sharding == "fsdp" and self.fsdp_reshard_after_forward
        ):
            return 3
        if self.sharding == "fsdp" or self.zero_stage == 2:
            return 2
        return self.zero_stage if self.sharding == "zero" else 0


def _number(value: Any, auto: int | None, default: int) -> int:
    """A DeepSpeed size: "auto" -> the HF integration's value, absent -> DeepSpeed's default."""
    if value is None:
        return default
    if value == "auto":
        return auto if auto is not None else default
    return int(float(value))


def strategy_of(
    training_args,
    deepspeed: str | Path | dict | None = None,
    hidden: int | None = None,
    sharding: ShardingStrategy | None = None,
) -> Strategy:
    """The run's strategy: `deepspeed` (the launch's config) or `--deepspeed`, else `--fsdp`, else DDP.

    The sharding is `read_strategy`'s (or `sharding`, already read); a config it cannot read
    raises its StrategyError, with the problems preflight names for the same config.
    """
    sharding = (sharding or read_strategy(training_args, deepspeed)).check()
    common = {
        "lora_r": int(training_args.lora_r) if training_args.lora_enable else None,
        "lora_dropout": float(training_args.lora_dropout or 0.0),
        "bits": int(training_args.bits) if training_args.bits in (4, 8) else 16,
        "double_quant": bool(training_args.double_quant),
        "gradient_checkpointing": bool(training_args.gradient_checkpointing)
        or sharding.fsdp_activation_checkpointing,
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "attn_implementation": str(training_args.attn_implementation),
    }
    if sharding.deepspeed and sharding.stage > 0:
        square = hidden * hidden if hidden else None
        return Strategy(
            sharding="zero",
            zero_stage=sharding.stage,
            offload_optimizer=sharding.offload_optimizer,
            offload_params=sharding.offload_params,
            overlap_comm=sharding.overlap_comm,
            reduce_bucket=_number(sharding.reduce_bucket, square, DS_DEFAULT_REDUCE_BUCKET),
            prefetch_bucket=_number(
                sharding.prefetch_bucket, int(0.9 * square) if square else None, DS_DEFAULT_PREFETCH_BUCKET
            ),
            sub_group_size=_number(sharding.sub_group_size, None, DS_DEFAULT_SUB_GROUP),
            **common,
        )
    if sharding.kind == "fsdp":
        return Strategy(
            sharding="fsdp",
            fsdp_reshard_after_forward=sharding.fsdp_reshard_after_forward,
            offload_params=sharding.offload_params,
            **common,
        )
    return Strategy(**common)
