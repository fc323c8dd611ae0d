"""Per-GPU memory of a training run, predicted before launch from the meta-device model.

A 7B run that cannot fit is found out in seconds on the planning host instead of minutes into a
multi-node launch (model load, data scan, first forward). The plan counts, per GPU:

* parameters, gradients and optimizer states (master weights included) under the run's strategy:
  DDP, DeepSpeed ZeRO-1/2/3 (+ CPU offload), FSDP2 (full shard / shard-grad-op / offload),
  LoRA and 4/8-bit QLoRA;
* buffers the strategy keeps besides them (DDP reducer buckets, ZeRO reduce buckets and gathered
  parameters, FSDP's unsharded units);
* the optimizer step's transient (fp32 gradient partition, foreach AdamW temporaries);
* activations of one micro-batch of spliced sequences, with and without gradient checkpointing.

`peak = parameters + gradients + optimizer states + buffers + max(activations, step transient)`:
activations are freed before the optimizer step and the step's temporaries after it. Gradients
are counted whole during backward (they grow while activations shrink), so the peak is an upper
bound of what `torch.cuda.max_memory_allocated` reports, by design.

Notation below: Ψ parameters, Ψt trainable ones, N data-parallel ranks, w bytes of a stored
weight (precision.py: 2 under `--bf16`, else 4; `--fp16` keeps fp32 masters), e bytes of an
activation (2 under `--bf16`/`--fp16` autocast, else 4).

Dtype rules (what the code in this repo and its libraries actually allocate):

* DDP (HF Trainer + torch AdamW on the weights as loaded): parameters wΨ, gradients wΨt, AdamW's
  exp_avg/exp_avg_sq wΨt each: torch creates them with `zeros_like(param)`, so a pure-bf16 run
  keeps bf16 states (2+2+4 = 8 bytes/param), an fp32 run fp32 ones (4+4+8 = 16). DDP's reducer
  keeps its own bucket copy of the gradients (+wΨt) because accelerate's DDP default is
  `gradient_as_bucket_view=False`; the foreach AdamW step (`adamw_torch`) allocates one temporary
  the size of a state (+wΨt); `adamw_torch_fused` does not.
* DeepSpeed ZeRO (ZeRO paper, Rajbhandari et al. 2020, §3/Fig. 1: mixed-precision Adam costs
  2Ψ + 2Ψ + 12Ψ = 16Ψ bytes; stage 1: 2Ψ + 2Ψ + 12Ψ/N, stage 2: 2Ψ + (2+12)Ψ/N, stage 3:
  (2+2+12)Ψ/N): DeepSpeed always keeps an fp32 master copy of its partition
  (`single_partition_of_fp32_groups` in deepspeed/runtime/zero/stage_1_and_2.py, also for fp32
  weights), and the HF Trainer's AdamW then runs on that partition: 4 + 8 = 12 bytes per
  trainable parameter over N. Frozen parameters are not in the optimizer (ZeRO-3 still shards
  them). Offload moves the master weights, states and gradient partitions (and with
  `offload_param` the weights) to CPU. Step transient: the fp32 gradient partition
  (`single_grad_partition`) plus the foreach temporary, 4Ψt/N each (stage 3: per `sub_group_size`).
* FSDP2 through accelerate: with mixed precision on, trainable weights are upcast to fp32 before
  sharding (accelerate/utils/fsdp_utils.py, "FSDP upcast of low precision parameters"), so 4Ψt/N
  weights + 4Ψt/N gradients + 8Ψt/N states, plus the unsharded units in the compute dtype.
* LoRA (Hu et al. 2021): adapters r·(in + out) per target Linear, the LLM's own Linear layers
  (lm_head, tower and projector excluded, as the published `find_all_linear_names` and
  lora.lora_target_modules). What trains is the freezing flags' decision, as in the worker: with
  `--mm_tunable_parts`, adapters train with mm_lora_layer or mm_language_model, and
  mm_language_model trains the LLM's own weights too (published semantics); the ladder's LoRA
  rungs therefore name `--mm_tunable_parts <trained multimodal parts>,mm_lora_layer`. 16-bit
  LoRA keeps adapters in fp32 (peft's `autocast_adapter_dtype=True`); 4/8-bit runs cast every
  non-quantized weight, adapters included, to bf16 under `--bf16` (quantization.kbit_training_dtypes).
* 4/8-bit (Dettmers et al.): the LLM's Linear weights only (quantization.SKIP_MODULES keeps the
  tower, projector and lm_head unquantized). NF4: 0.5 byte + one fp32 absmax per 64 weights, or
  with double quantization an 8-bit absmax per 64 and an fp32 constant per 256 blocks (QLoRA
  paper §3: 0.127 bits/param): 0.5 + 1/64 + 4/(64·256) bytes. LLM.int8: 1 byte + one fp32
  scale per output row (4/in bytes per weight).

Activations per layer are counted the way Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", §4.1) count them for GPT: every tensor autograd
saves for backward. Their GPT layer stores sbh(34 + 5as/h) bytes in 16-bit; redone for this
model's layers (checked against the tensors autograd saves in tests/test_memory_plan.py):

* Qwen2 decoder layer, s tokens, b sequences, hidden h, intermediate I, k = the key/value width
  attention saves: sb·(8h + e·(6h + 2k + 4I)) bytes. 8h: both RMSNorms save their input in
  fp32; 6h: normed outputs and linear inputs (o_proj reads a view of the attention output);
  2k: keys and values (k = num_kv_heads·head_dim with flash-attention or without padding;
  sdpa with a padding mask repeats them to h); 4I: SwiGLU's gate, up, SiLU output and product.
  Flash / memory-efficient attention saves no s×s scores (Korthikanti's 5as/h term is gone);
  with a padded batch (b > 1) sdpa builds a float mask per layer (+e·b·s²); eager attention
  adds its softmax (fp32 + copy, +(4+e)·a·b·s²).
* SigLIP encoder layer, per frame of P patches: P·(e·(8h + 2I) + 16) (LayerNorm inputs, q/k/v,
  attention output, fc1 input/output, GELU output, LayerNorm statistics in fp32).
* Projector e·P·(h_vision + 2h) per frame; the labelled-positions loss n·(e·h + 4V) for n labels.
* With gradient checkpointing (every decoder/encoder layer, as transformers does) only each
  layer's input stays, e·sbh per layer (Korthikanti's "full recomputation", 2sbhL), plus one
  layer recomputed in backward.

The spliced sequence of the worst sample (one with history): H·T history tokens + C·T current
tokens + text, T visual tokens per frame, C = ceil(num_frames / num_future_steps) current frames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from torch import nn

from streamvln_model.config.strategies import read_deepspeed_config
from streamvln_model.model.vision import tokens_per_frame

GIB = 2**30
FP32 = 4
# What the GPU holds outside PyTorch's allocator (CUDA context, cuBLAS/NCCL workspaces), and the
# share of the rest usable before fragmentation bites: the verdict's margins.
CUDA_CONTEXT_BYTES = 1 * GIB
ALLOCATOR_HEADROOM = 0.9

# Text of one sample, measured with the qwen_1_5 template (tests/test_memory_plan.py): ~83 tokens
# of system turn + task wording, the instruction, ~20 tokens per turn (observation sentence,
# <image>, actions, template tokens), ~13.5 labelled tokens per turn.
TEXT_BASE_TOKENS = 96
INSTRUCTION_TOKENS = 160  # an RxR-length instruction (~120 words); R2R's ~30 words are ~40
TURN_TOKENS = 20
LABEL_TOKENS_PER_TURN = 14

# DeepSpeed defaults when the JSON omits a size, and the HF integration's "auto" values.
DS_DEFAULT_REDUCE_BUCKET = 500_000_000
DS_DEFAULT_PREFETCH_BUCKET = 50_000_000
DS_DEFAULT_SUB_GROUP = 1_000_000_000

# The configs the advice names (relative to the repository root).
ZERO2_CONFIG = "configs/deepspeed/zero2.json"
ZERO3_CONFIG = "configs/deepspeed/zero3.json"
ZERO3_OFFLOAD_CONFIG = "configs/deepspeed/zero3_offload.json"

MULTIMODAL_KEYS = ("mm_projector", "vision_tower", "vision_resampler")
FUSED_OPTIMIZERS = ("adamw_torch_fused",)


# ---- inputs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensors:
    """`count` parameters stored at `bytes_per` bytes each (fractional for 4-bit + scales)."""

    name: str
    count: int
    bytes_per: float
    trainable: bool
    quantized: bool = False

    @property
    def bytes(self) -> float:
        return self.count * self.bytes_per


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


# ---- reading the model, the flags and the configs -----------------------------------------
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


def _number(value: Any, auto: int | None, default: int) -> int:
    """A DeepSpeed size: "auto" -> the HF integration's value, absent -> DeepSpeed's default."""
    if value is None:
        return default
    if value == "auto":
        return auto if auto is not None else default
    return int(float(value))


def read_deepspeed(deepspeed: str | Path | dict | None) -> dict | None:
    """The DeepSpeed config as a dict, or None when unset or unreadable (preflight reports why)."""
    if deepspeed is None or deepspeed == "":
        return None
    return read_deepspeed_config(deepspeed if isinstance(deepspeed, dict) else str(deepspeed))[0]


def _offloaded(section: dict | None) -> bool:
    return bool(section) and str(section.get("device", "none")).lower() not in ("none", "")


def _fsdp_settings(training_args) -> tuple[bool, bool, bool, bool]:
    """(enabled, reshard_after_forward, cpu_offload, activation_checkpointing) from the fsdp flags.

    transformers 5 turns `--fsdp "full_shard offload"` into `fsdp=True` + `fsdp_config` entries
    while parsing; both forms are read here.
    """
    fsdp = getattr(training_args, "fsdp", None)
    if not fsdp:
        return False, True, False, False
    config = getattr(training_args, "fsdp_config", None) or {}
    if isinstance(config, str):
        config = json.loads(Path(config).read_text())
    config = {k.removeprefix("fsdp_"): v for k, v in config.items()}
    items = (
        fsdp.split() if isinstance(fsdp, str) else [str(i) for i in fsdp] if isinstance(fsdp, list) else []
    )
    items = [str(getattr(i, "value", i)) for i in items]
    reshard = config.get("reshard_after_forward", "shard_grad_op" not in items)
    reshard = str(reshard).lower() not in ("false", "shard_grad_op", "no_shard")
    offload = str(config.get("cpu_offload", "offload" in items)).lower() == "true"
    checkpointing = str(config.get("activation_checkpointing", False)).lower() == "true"
    return True, reshard, offload, checkpointing


def strategy_of(
    training_args, deepspeed: str | Path | dict | None = None, hidden: int | None = None
) -> Strategy:
    """The run's strategy: `deepspeed` (the launch's config) or `--deepspeed`, else `--fsdp`, else DDP."""
    config = read_deepspeed(deepspeed if deepspeed is not None else training_args.deepspeed)
    fsdp, reshard, fsdp_offload, fsdp_checkpointing = _fsdp_settings(training_args)
    common = {
        "lora_r": int(training_args.lora_r) if training_args.lora_enable else None,
        "lora_dropout": float(training_args.lora_dropout or 0.0),
        "bits": int(training_args.bits) if training_args.bits in (4, 8) else 16,
        "double_quant": bool(training_args.double_quant),
        "gradient_checkpointing": bool(training_args.gradient_checkpointing) or fsdp_checkpointing,
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "attn_implementation": str(training_args.attn_implementation),
    }
    if config is not None and int((config.get("zero_optimization") or {}).get("stage", 0)) > 0:
        zero = config["zero_optimization"]
        square = hidden * hidden if hidden else None
        return Strategy(
            sharding="zero",
            zero_stage=int(zero["stage"]),
            offload_optimizer=_offloaded(zero.get("offload_optimizer")),
            offload_params=_offloaded(zero.get("offload_param")),
            overlap_comm=bool(zero.get("overlap_comm", False)),
            reduce_bucket=_number(zero.get("reduce_bucket_size"), square, DS_DEFAULT_REDUCE_BUCKET),
            prefetch_bucket=_number(
                zero.get("stage3_prefetch_bucket_size"),
                int(0.9 * square) if square else None,
                DS_DEFAULT_PREFETCH_BUCKET,
            ),
            sub_group_size=_number(zero.get("sub_group_size"), None, DS_DEFAULT_SUB_GROUP),
            **common,
        )
    if fsdp:
        return Strategy(
            sharding="fsdp", fsdp_reshard_after_forward=reshard, offload_params=fsdp_offload, **common
        )
    return Strategy(**common)


# ---- the arithmetic -------------------------------------------------------------------------
def quantized_bytes_per_param(bits: int, double_quant: bool, in_features: int) -> float:
    """Bytes of one quantized weight with its scales (see the module doc for the sources)."""
    if bits == 4:
        return 0.5 + (1 / 64 + FP32 / (64 * 256) if double_quant else FP32 / 64)
    if bits == 8:
        return 1 + FP32 / in_features
    raise ValueError(f"bits={bits}: only 4 and 8 are quantized")


def lora_parameters(shape: ModelShape, r: int) -> int:
    """Adapter parameters: r·(in + out) per target Linear (A: r×in, B: out×r)."""
    return sum(r * (fan_in + fan_out) for fan_in, fan_out in shape.lora_targets)


def parameter_layout(shape: ModelShape, precision: Precision, strategy: Strategy) -> list[Tensors]:
    """Every parameter with the bytes it is stored in and whether it trains (module doc's rules).

    What trains is the freezing flags' decision (`shape.*_trainable`, `shape.lora_trains`), as in
    the worker; quantized weights never train, and the ladder's LoRA rungs freeze the LLM.
    """
    w = precision.weight_bytes
    llm_frozen = strategy.lora_llm_frozen

    def split(name: str, total: int, trainable: int, nbytes: float) -> list[Tensors]:
        return [Tensors(name, trainable, nbytes, True), Tensors(name, total - trainable, nbytes, False)]

    layout: list[Tensors] = []
    if strategy.bits < 16:
        mean_in = sum(i * o for i, o in shape.lora_targets) / max(sum(o for _, o in shape.lora_targets), 1)
        qbytes = quantized_bytes_per_param(strategy.bits, strategy.double_quant, int(mean_in))
        layout.append(Tensors("llm linear (quantized)", shape.llm_linear, qbytes, False, quantized=True))
    else:
        layout += split("llm linear", shape.llm_linear, 0 if llm_frozen else shape.llm_linear_trainable, w)
    layout += split("llm other", shape.llm_other, 0 if llm_frozen else shape.llm_other_trainable, w)
    layout += split("tower + projector", shape.multimodal, shape.multimodal_trainable, w)
    if strategy.lora_r:
        adapter_bytes = w if strategy.bits < 16 else FP32
        count = lora_parameters(shape, strategy.lora_r)
        layout.append(Tensors("lora adapters", count, adapter_bytes, llm_frozen or shape.lora_trains))
    return [t for t in layout if t.count]


def _optimizer_state_bytes(optim: str, state_dtype_bytes: float) -> float:
    """Optimizer state bytes per trainable element: Adam-type two states, 8-bit ones a byte each."""
    if "8bit" in optim:
        return 2.0
    if optim.startswith("sgd") or optim == "adafactor":
        return 0.0  # HF's SGD has no momentum by default; Adafactor's factored states are negligible
    return 2 * state_dtype_bytes


@dataclass
class Estimate:
    """Bytes per GPU of one strategy (and what it needs on the CPU, offloaded)."""

    label: str
    strategy: Strategy
    world_size: int
    parameters_total: int
    parameters_trainable: int
    sequence_length: int
    frames_per_step: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    buffer_bytes: int
    activation_bytes: int
    activation_bytes_full: int
    activation_bytes_checkpointed: int
    step_transient_bytes: int
    cpu_bytes: int
    change: str = ""  # the flags that turn the run into this one (empty: the run as given)

    @property
    def peak_bytes(self) -> int:
        return (
            self.parameter_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.buffer_bytes
            + max(self.activation_bytes, self.step_transient_bytes)
        )

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "strategy"}
        data["strategy"] = asdict(self.strategy)
        data["peak_bytes"] = self.peak_bytes
        return data

    def breakdown(self) -> str:
        return (
            f"parameters {gib(self.parameter_bytes)}, gradients {gib(self.gradient_bytes)}, optimizer states "
            f"{gib(self.optimizer_bytes)}, buffers {gib(self.buffer_bytes)}, activations "
            f"{gib(self.activation_bytes)} (step transient {gib(self.step_transient_bytes)})"
        )


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def decoder_layer_activation_bytes(
    s: int, b: int, hidden: int, kv_width: int, intermediate: int, heads: int, e: int, attn: str
) -> int:
    """What one Qwen2 decoder layer saves for backward (module doc; Korthikanti et al. 2022 §4.1).

    sb·(8h + e·(6h + 2k + 4I)): fp32 RMSNorm inputs, normed outputs and linear inputs, keys and
    values (repeated to h by sdpa when a padding mask is present), SwiGLU's four I-wide tensors;
    plus sdpa's per-layer float padding mask for b > 1 and eager attention's softmax.
    """
    flash = attn == "flash_attention_2"
    kv = kv_width if (flash or b == 1) else hidden
    layer = s * b * (8 * hidden + e * (6 * hidden + 2 * kv + 4 * intermediate))
    if not flash and b > 1:
        layer += e * b * s * s
    if attn == "eager":
        layer += (FP32 + e) * heads * b * s * s
    return layer


def encoder_layer_activation_bytes(
    frames: int, patches: int, hidden: int, intermediate: int, heads: int, e: int, attn: str
) -> int:
    """What one SigLIP encoder layer saves per batch of frames: P·(e·(8h + 2I) + 16) per frame
    (LayerNorm inputs and fp32 statistics, q/k/v, attention output, fc1 in/out, GELU output)."""
    tokens = frames * patches
    layer = tokens * (e * (8 * hidden + 2 * intermediate) + 16)
    if attn == "eager":
        layer += (FP32 + e) * heads * frames * patches * patches
    return layer


def _activation_bytes(
    shape: ModelShape, work: Workload, precision: Precision, strategy: Strategy, checkpointing: bool
) -> int:
    """Activations of one micro-batch (module doc: per-layer formulas, Korthikanti et al. 2022)."""
    e, attn = precision.activation_bytes, strategy.attn_implementation
    s, b, h = work.sequence_length, work.batch_size, shape.hidden
    tokens = s * b
    layer = decoder_layer_activation_bytes(s, b, h, shape.kv_width, shape.intermediate, shape.heads, e, attn)
    if strategy.lora_r:
        per_layer_targets = shape.lora_targets[: len(shape.lora_targets) // max(shape.layers, 1)]
        dropout = e + 1 if strategy.lora_dropout > 0 else 0  # dropout output + its bool mask
        layer += tokens * sum(dropout * fan_in + e * strategy.lora_r for fan_in, _ in per_layer_targets)
    final = tokens * (FP32 + e) * h + work.label_tokens * (e * h + FP32 * shape.vocab)
    llm = (shape.layers * e * tokens * h + layer if checkpointing else shape.layers * layer) + final

    frames, patches, hv = work.frames, shape.patches_per_frame, shape.tower_hidden
    tower = 0
    if shape.tower_trains:
        tower_layer = encoder_layer_activation_bytes(
            frames, patches, hv, shape.tower_intermediate, shape.tower_heads, e, attn
        )
        runs = shape.tower_layers_run
        tower = runs * e * frames * patches * hv + tower_layer if checkpointing else runs * tower_layer
        tower += e * frames * 3 * shape.pixels_per_frame  # the patch convolution keeps its pixels
    projector = e * frames * patches * (hv + 2 * h) if (shape.tower_trains or shape.projector_trains) else 0
    return int(llm + tower + projector)


def estimate(
    shape: ModelShape,
    work: Workload,
    precision: Precision,
    strategy: Strategy,
    world_size: int,
    change: str = "",
) -> Estimate:
    """Bytes per GPU of `strategy` (module doc: formulas and sources)."""
    n = max(world_size, 1)
    layout = parameter_layout(shape, precision, strategy)
    e = precision.activation_bytes
    quantized = sum(t.bytes for t in layout if t.quantized)
    weights = sum(t.bytes for t in layout)
    trainable_count = sum(t.count for t in layout if t.trainable)
    trainable_bytes = sum(t.bytes for t in layout if t.trainable)
    foreach = not any(name in strategy.optim for name in FUSED_OPTIMIZERS) and "8bit" not in strategy.optim
    cpu = 0
    buffers = 0.0
    if strategy.bits < 16:  # a 4/8-bit Linear dequantizes its weight for each matmul
        buffers += e * max(i * o for i, o in shape.lora_targets)

    if strategy.sharding == "zero":
        stage = strategy.zero_stage
        params = weights if stage < 3 else quantized + (weights - quantized) / n
        if stage == 3 and strategy.offload_params:
            cpu += (weights - quantized) / n
            params = quantized
        grads = trainable_bytes / n if stage >= 2 else trainable_bytes
        optimizer = trainable_count * (FP32 + _optimizer_state_bytes(strategy.optim, FP32)) / n
        partition = (
            trainable_count / n
            if stage < 3
            else min(trainable_count / n, strategy.sub_group_size or DS_DEFAULT_SUB_GROUP)
        )
        transient = FP32 * partition * (2 if foreach else 1)
        if strategy.offload_optimizer:
            cpu += optimizer + FP32 * trainable_count / n
            optimizer, transient = 0, 0
            grads = 0 if stage >= 2 else grads
        buckets = (2 if strategy.overlap_comm else 1) * (strategy.reduce_bucket or DS_DEFAULT_REDUCE_BUCKET)
        buffers += precision.weight_bytes * buckets
        if stage == 3:
            gathered = shape.largest_module + (strategy.prefetch_bucket or DS_DEFAULT_PREFETCH_BUCKET)
            buffers += precision.weight_bytes * gathered
    elif strategy.sharding == "fsdp":
        # accelerate upcasts trainable weights to fp32 under mixed precision (not in 4/8-bit runs).
        upcast = [
            replace(t, bytes_per=FP32) if t.trainable and precision.mixed and strategy.bits == 16 else t
            for t in layout
        ]
        sharded = sum(t.bytes for t in upcast if not t.quantized)
        trainable_sharded = sum(t.bytes for t in upcast if t.trainable)
        params = quantized + sharded / n
        grads = trainable_sharded / n
        optimizer = (
            trainable_count
            * _optimizer_state_bytes(strategy.optim, trainable_sharded / max(trainable_count, 1))
            / n
        )
        transient = trainable_sharded / n if foreach else 0
        if strategy.offload_params:
            cpu += sharded / n + grads + optimizer
            params, grads, optimizer, transient = quantized, 0, 0, 0
        if strategy.fsdp_reshard_after_forward:
            buffers += e * (shape.root_parameters + 2 * shape.largest_layer)
        else:
            buffers += e * shape.total
        buffers += FP32 * shape.largest_layer  # one unit's unsharded gradients before reduce-scatter
    else:
        params = weights
        grads = trainable_bytes
        optimizer = sum(
            t.count * _optimizer_state_bytes(strategy.optim, t.bytes_per) for t in layout if t.trainable
        )
        transient = trainable_bytes if foreach else 0
        if n > 1:
            buffers += trainable_bytes  # DDP reducer buckets (gradient_as_bucket_view=False)

    full = _activation_bytes(shape, work, precision, strategy, checkpointing=False)
    checkpointed = _activation_bytes(shape, work, precision, strategy, checkpointing=True)
    return Estimate(
        label=strategy.label,
        strategy=strategy,
        world_size=n,
        parameters_total=sum(t.count for t in layout),
        parameters_trainable=trainable_count,
        sequence_length=work.sequence_length,
        frames_per_step=work.frames,
        parameter_bytes=int(params),
        gradient_bytes=int(grads),
        optimizer_bytes=int(optimizer),
        buffer_bytes=int(buffers),
        activation_bytes=checkpointed if strategy.gradient_checkpointing else full,
        activation_bytes_full=full,
        activation_bytes_checkpointed=checkpointed,
        step_transient_bytes=int(transient),
        cpu_bytes=int(cpu),
        change=change,
    )


def usable_bytes(gpu_memory_gb: float) -> int:
    """What a GPU of `gpu_memory_gb` GiB leaves to PyTorch's tensors (module constants)."""
    return int((gpu_memory_gb * GIB - CUDA_CONTEXT_BYTES) * ALLOCATOR_HEADROOM)


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


@dataclass
class MemoryReport:
    """The run's estimate, the verdict against `gpu_memory_gb`, and the ladder of cheaper fits."""

    run: Estimate
    gpu_memory_gb: float | None
    candidates: list[Estimate] = field(default_factory=list)

    @property
    def usable_bytes(self) -> int | None:
        return usable_bytes(self.gpu_memory_gb) if self.gpu_memory_gb is not None else None

    @property
    def fits(self) -> bool | None:
        return None if self.usable_bytes is None else self.run.peak_bytes <= self.usable_bytes

    @property
    def cheapest_fit(self) -> Estimate | None:
        usable = self.usable_bytes
        return next((c for c in self.candidates if usable is not None and c.peak_bytes <= usable), None)

    def problem(self) -> str | None:
        """The preflight problem when the run cannot fit: the numbers and the cheapest change."""
        if self.fits is not False:
            return None
        run, usable = self.run, self.usable_bytes or 0
        text = (
            f"--gpu_memory_gb {self.gpu_memory_gb:g}: {run.label} on {run.world_size} GPU(s) needs "
            f"~{gib(run.peak_bytes)} per GPU ({run.breakdown()}; sequence {run.sequence_length} tokens, "
            f"{run.frames_per_step} frames per micro-batch), but {gib(max(usable, 0))} of "
            f"{self.gpu_memory_gb:g} GiB is usable."
        )
        fit = self.cheapest_fit
        if fit is not None:
            return text + f" Fix: {fit.change} ({fit.label}: ~{gib(fit.peak_bytes)} per GPU)"
        if not self.candidates:
            return text + " Fix: more GPUs, a smaller --per_device_train_batch_size, or a larger GPU"
        last = self.candidates[-1]
        return (
            text + f" Nothing fits: even {last.change} ({last.label}) needs ~{gib(last.peak_bytes)} per GPU. "
            "Fix: a larger GPU, a smaller --per_device_train_batch_size or --num_frames, or more GPUs"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per strategy (the run first), in GiB, for the Prefect table and MLflow."""
        usable = self.usable_bytes
        rows = []
        for item in [self.run, *self.candidates]:
            rows.append(
                {
                    "strategy": item.label,
                    "change": item.change or "(this run)",
                    "parameters_gib": round(item.parameter_bytes / GIB, 2),
                    "gradients_gib": round(item.gradient_bytes / GIB, 2),
                    "optimizer_gib": round(item.optimizer_bytes / GIB, 2),
                    "buffers_gib": round(item.buffer_bytes / GIB, 2),
                    "activations_gib": round(item.activation_bytes / GIB, 2),
                    "step_transient_gib": round(item.step_transient_bytes / GIB, 2),
                    "peak_gib": round(item.peak_bytes / GIB, 2),
                    "cpu_offloaded_gib": round(item.cpu_bytes / GIB, 2),
                    "fits": "-" if usable is None else ("yes" if item.peak_bytes <= usable else "no"),
                }
            )
        return rows


def report(
    shape: ModelShape,
    work: Workload,
    precision: Precision,
    strategy: Strategy,
    world_size: int,
    gpu_memory_gb: float | None = None,
    lora_r: int = 64,
) -> MemoryReport:
    """The run's estimate and, when a GPU size is given, every rung of the ladder (cheapest first)."""
    run = estimate(shape, work, precision, strategy, world_size)
    candidates = []
    if gpu_memory_gb is not None:
        for flags, rung in ladder(strategy, strategy.lora_r or lora_r, lora_parts(shape)):
            rung = _with_bucket_defaults(rung, shape.hidden)
            candidates.append(estimate(shape, work, precision, rung, world_size, change=flags))
    return MemoryReport(run=run, gpu_memory_gb=gpu_memory_gb, candidates=candidates)


def plan_memory(
    arguments,
    world_size: int,
    deepspeed: str | Path | dict | None = None,
    config=None,
    text_tokens: int | None = None,
) -> MemoryReport:
    """The memory report for parsed `arguments` on `world_size` GPUs (meta device, reads no weights).

    `deepspeed` is the launch's DeepSpeed config when it is not in the flags (the flow's
    LaunchConfig.deepspeed); `config` the model config already built with the run's overwrites.
    """
    from streamvln_model.model.builder import meta_model, model_config
    from streamvln_model.model.freezing import freezing_plan

    model_args, data_args, training_args = arguments.as_tuple()
    config = config if config is not None else model_config(model_args, data_args, training_args)
    model = meta_model(config)
    plan = freezing_plan(model_args, training_args)
    shape = model_shape(model, plan.trains, set(model.unused_parameter_names()))
    strategy = strategy_of(training_args, deepspeed, hidden=config.hidden_size)
    return report(
        shape,
        workload_of(shape, data_args, training_args, text_tokens),
        Precision.of(training_args),
        strategy,
        world_size,
        getattr(training_args, "gpu_memory_gb", None),
        lora_r=int(training_args.lora_r),
    )


def memory_problems(arguments, world_size: int, deepspeed: str | Path | dict | None = None) -> list[str]:
    """Preflight: the problem when `--gpu_memory_gb` is set and the run cannot fit, else nothing."""
    if getattr(arguments.training, "gpu_memory_gb", None) is None:
        return []
    try:
        problem = plan_memory(arguments, world_size, deepspeed).problem()
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"--gpu_memory_gb: cannot plan the memory of this run ({err})"]
    return [problem] if problem else []
