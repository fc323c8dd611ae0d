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

from dataclasses import asdict, dataclass, replace
from typing import Any

from streamvln_model.training.memory.shape import ModelShape, Precision, Workload
from streamvln_model.training.memory.strategy import (
    DS_DEFAULT_PREFETCH_BUCKET,
    DS_DEFAULT_REDUCE_BUCKET,
    DS_DEFAULT_SUB_GROUP,
    Strategy,
)

GIB = 2**30
FP32 = 4
FUSED_OPTIMIZERS = ("adamw_torch_fused",)


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
