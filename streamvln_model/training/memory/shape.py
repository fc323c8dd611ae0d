"""What the memory plan reads from the run before any weight loads.

`ModelShape`: counts and sizes of the meta-device model, split by what can happen to them
(LoRA targets, quantized weights, tower + projector), with the freezing flags applied.
`Workload`: one micro-batch per GPU, its worst-case spliced sequence and the frames the tower
encodes. `Precision`: the bytes of a stored weight and of an activation (precision.py's rules).

The spliced sequence of the worst sample (one with history): H·T history tokens + C·T current
tokens + text, T visual tokens per frame, C = ceil(num_frames / num_future_steps) current frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from streamvln_model.model.vision import tokens_per_frame

# Text of one sample, measured with the qwen_1_5 template (tests/test_memory_plan.py): ~83 tokens
# of system turn + task wording, the instruction, ~20 tokens per turn (observation sentence,
# <image>, actions, template tokens), ~13.5 labelled tokens per turn.
TEXT_BASE_TOKENS = 96
INSTRUCTION_TOKENS = 160  # an RxR-length instruction (~120 words); R2R's ~30 words are ~40
TURN_TOKENS = 20
LABEL_TOKENS_PER_TURN = 14

MULTIMODAL_KEYS = ("mm_projector", "vision_tower", "vision_resampler")


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from the model, read once from the meta-device model.

    Counts are split by what can happen to them: the LLM's Linear weights (LoRA targets, the
    weights 4/8-bit runs quantize), the LLM's other parameters (embeddings, lm_head, norms,
    biases), and the tower + projector. `*_trainable` already applies the freezing flags and
    the worker's `freeze_never_used`.
    """

    llm_linear: int
    llm_linear_trainable: int
    llm_other: int
    llm_other_trainable: int
    multimodal: int
    multimodal_trainable: int
    lora_targets: tuple[tuple[int, int], ...]  # (in, out) of every LLM Linear layer
    lora_trains: bool  # whether the freezing flags would train LoRA layers (under --lora_enable)
    largest_module: int  # parameters of the largest module with its own weights (ZeRO-3 gathers it)
    largest_layer: int  # parameters of the largest decoder/encoder layer (an FSDP unit)
    root_parameters: int  # parameters outside those layers (FSDP's root unit)
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tower_hidden: int
    tower_intermediate: int
    tower_layers_run: int
    tower_heads: int
    patches_per_frame: int
    pixels_per_frame: int
    tokens_per_frame: int
    tower_trains: bool
    projector_trains: bool

    @property
    def total(self) -> int:
        return self.llm_linear + self.llm_other + self.multimodal

    @property
    def trainable(self) -> int:
        return self.llm_linear_trainable + self.llm_other_trainable + self.multimodal_trainable

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)


@dataclass(frozen=True)
class Workload:
    """One micro-batch per GPU: its worst-case spliced sequence and the frames the tower encodes."""

    batch_size: int
    history_frames: int
    current_frames: int
    tokens_per_frame: int
    text_tokens: int
    label_tokens: int
    max_length: int | None = None

    @property
    def visual_tokens(self) -> int:
        return (self.history_frames + self.current_frames) * self.tokens_per_frame

    @property
    def sequence_length(self) -> int:
        length = self.visual_tokens + self.text_tokens
        return min(length, self.max_length) if self.max_length else length

    @property
    def frames(self) -> int:
        return self.batch_size * (self.history_frames + self.current_frames)


@dataclass(frozen=True)
class Precision:
    """Stored-weight and activation bytes (precision.py's rules) and whether autocast runs."""

    weight_bytes: int
    activation_bytes: int
    mixed: bool

    @classmethod
    def of(cls, training_args) -> Precision:
        bf16, fp16 = bool(training_args.bf16), bool(training_args.fp16)
        return cls(
            weight_bytes=2 if bf16 else 4, activation_bytes=2 if (bf16 or fp16) else 4, mixed=bf16 or fp16
        )


def model_shape(
    model: nn.Module, trains: Callable[[str], bool], unused: set[str] | None = None
) -> ModelShape:
    """Counts and sizes from a (meta-device) StreamVLN model; `trains(name)` is the freezing plan."""
    unused = unused or set()
    counts = {"llm_linear": [0, 0], "llm_other": [0, 0], "multimodal": [0, 0]}
    linear_weights = set()
    targets = []
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Linear)
            and not any(k in name for k in MULTIMODAL_KEYS)
            and "lm_head" not in name
        ):
            linear_weights.add(f"{name}.weight")
            targets.append((module.in_features, module.out_features))
    tower_trains = projector_trains = False
    for name, param in model.named_parameters():
        kind = (
            "multimodal"
            if any(k in name for k in MULTIMODAL_KEYS) or name == "model.image_newline"
            else "llm_linear"
            if name in linear_weights
            else "llm_other"
        )
        trainable = trains(name) and name not in unused
        counts[kind][0] += param.numel()
        counts[kind][1] += param.numel() if trainable else 0
        tower_trains |= trainable and "vision_tower" in name
        projector_trains |= trainable and "mm_projector" in name
    seen: set[int] = set()  # tied weights (lm_head = embed_tokens) count once, like named_parameters
    own = []
    for module in model.modules():
        fresh = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        own.append(sum(p.numel() for p in fresh))
    layer_sizes = [
        sum(p.numel() for p in m.parameters())
        for m in model.modules()
        if type(m).__name__ in ("Qwen2DecoderLayer", "SiglipEncoderLayer")
    ]
    config = model.config
    tower = model.get_vision_tower()
    return ModelShape(
        llm_linear=counts["llm_linear"][0],
        llm_linear_trainable=counts["llm_linear"][1],
        llm_other=counts["llm_other"][0],
        llm_other_trainable=counts["llm_other"][1],
        multimodal=counts["multimodal"][0],
        multimodal_trainable=counts["multimodal"][1],
        lora_targets=tuple(targets),
        lora_trains=trains("model.layers.0.self_attn.q_proj.lora_A.default.weight"),
        largest_module=max(own),
        largest_layer=max(layer_sizes, default=0),
        root_parameters=sum(own) - sum(layer_sizes),
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads or config.num_attention_heads,
        vocab=config.vocab_size,
        tower_hidden=tower.config.hidden_size,
        tower_intermediate=tower.config.intermediate_size,
        tower_layers_run=tower.layers_run,
        tower_heads=tower.config.num_attention_heads,
        patches_per_frame=tower.num_patches_per_side**2,
        pixels_per_frame=tower.config.image_size**2,
        tokens_per_frame=tokens_per_frame(
            tower.num_patches_per_side, config.mm_spatial_pool_stride, config.mm_spatial_pool_mode
        ),
        tower_trains=tower_trains,
        projector_trains=projector_trains,
    )


def workload_of(shape: ModelShape, data_args, training_args, text_tokens: int | None = None) -> Workload:
    """The micro-batch the flags describe: sampling flags -> frames, template -> text tokens."""
    turns = math.ceil(data_args.num_frames / data_args.num_future_steps)
    text = (
        text_tokens
        if text_tokens is not None
        else TEXT_BASE_TOKENS + INSTRUCTION_TOKENS + TURN_TOKENS * turns
    )
    batch = max(int(training_args.per_device_train_batch_size), 1)
    return Workload(
        batch_size=batch,
        history_frames=int(data_args.num_history or 0),
        current_frames=turns,
        tokens_per_frame=shape.tokens_per_frame,
        text_tokens=text,
        label_tokens=batch * LABEL_TOKENS_PER_TURN * turns,
        max_length=training_args.model_max_length,
    )
