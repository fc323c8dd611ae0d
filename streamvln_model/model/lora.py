"""`--lora_enable`: LoRA on the language model, as the published StreamVLN/LLaVA-NeXT script does.

Published behaviour reproduced here:

* LoraConfig(r=lora_r, lora_alpha, lora_dropout, bias=lora_bias, task_type CAUSAL_LM) on every
  linear layer of the LLM: every `nn.Linear` (bitsandbytes' 4/8-bit layers are ones too) outside
  the multimodal modules and except `lm_head`. `--lora_target_modules` is never read.
* The worker wraps the model with `get_peft_model` after k-bit preparation and input gradients,
  and then applies the freezing flags (freezing.py), in the published order: under
  `--mm_tunable_parts` everything is frozen and the named parts unfrozen, so the LoRA layers train
  only with `mm_lora_layer` (or `mm_language_model`, which unfreezes every non-multimodal name).
* With 16 bits the model is cast to bf16 under `--bf16` before wrapping (a no-op here: the weights
  already load in bf16).

Different on purpose (docs/DIFFERENCES.md):

* Targets are full module names. The published script collects leaf names (`q_proj`, ...) and
  peft matches those as suffixes of every module, so its LoRA also lands on the SigLIP tower's
  `q_proj`/`k_proj`/`v_proj`, which its own discovery meant to leave out.
* Under `--fp16` the model is not cast to fp16 (fp32 master weights, see precision.py): the
  GradScaler refuses fp16 LoRA gradients.
* `--lora_weight_path` (declared but never read by the published script) loads an earlier
  adapter's weights into the new LoRA layers before training.
* The adapter records the base checkpoint as an absolute path, so `load_trained` finds it from
  any working directory.

The adapter files (reading `--lora_weight_path`, the weights saved beside the adapter) are
checkpoint/adapters.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from streamvln_model.checkpoint.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_weights_file,
    load_adapter_weights,
)
from streamvln_model.model.freezing import parse_tunable_parts
from streamvln_model.model.precision import weight_dtype
from streamvln_model.model.quantization import (
    QUANTIZED_BITS,
    bitsandbytes_missing,
    is_quantized_run,
    kbit_training_dtypes,
    prepare_for_kbit_training,
)

logger = logging.getLogger("streamvln.lora")

# Module-name keywords the published discovery skips (the multimodal modules of LLaVA variants).
MULTIMODAL_KEYWORDS = (
    "vision_tower",
    "mm_projector",
    "mem_projector",
    "point_projector",
    "vision_resampler",
    "mem_resampler",
    "pointnet",
)


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of the LLM's linear layers: the published discovery, matched exactly."""
    return sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not any(keyword in name for keyword in MULTIMODAL_KEYWORDS)
        and name.split(".")[-1] != "lm_head"
    )


def lora_config(model: nn.Module, training_args):
    """The published LoraConfig, with the targets as full names (see the module docstring)."""
    from peft import LoraConfig

    return LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=lora_target_modules(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )


def is_peft_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under a peft wrapper (its parameters carry the LLaVA names, LoRA layers included)."""
    return model.get_base_model() if is_peft_model(model) else model


def apply_lora(model: nn.Module, training_args) -> nn.Module:
    """`get_peft_model` with the published LoraConfig; loads `--lora_weight_path` when given."""
    from peft import get_peft_model

    if training_args.bits not in QUANTIZED_BITS and training_args.bf16:
        model.to(torch.bfloat16)  # published; the weights already loaded in bf16
    base_path = getattr(model, "name_or_path", None)
    peft_model = get_peft_model(model, lora_config(model, training_args))
    if base_path and Path(base_path).is_dir():
        # Recorded in adapter_config.json: `load_trained` rebuilds the base from it.
        peft_model.peft_config["default"].base_model_name_or_path = str(Path(base_path).resolve())
    if training_args.lora_weight_path:
        load_adapter_weights(peft_model, training_args.lora_weight_path)
    return peft_model


def add_training_options(model: nn.Module, training_args) -> nn.Module:
    """What the flags add before freezing, in the published order: k-bit preparation (`--bits
    4|8`), input gradients (needed by checkpointed layers whose own inputs need none), then the
    LoRA wrapper. Returns the model to train (a peft model with `--lora_enable`)."""
    if is_quantized_run(training_args):
        model = prepare_for_kbit_training(model, training_args)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        targets = len(lora_target_modules(model))
        model = apply_lora(model, training_args)
        logger.info(
            "LoRA r=%d alpha=%d on %d linear layers of the LLM",
            training_args.lora_r,
            training_args.lora_alpha,
            targets,
        )
    return model


def restore_training_dtypes(model: nn.Module, training_args) -> None:
    """After freezing: a 4/8-bit run's weights back in the run's dtype (see quantization.py)."""
    if is_quantized_run(training_args):
        kbit_training_dtypes(model, weight_dtype(training_args))


def planned_model(model: nn.Module, training_args) -> nn.Module:
    """The model's parameter names as training will see them: LoRA layers added when enabled.

    `model` is modified in place (meta-device models are cheap: the caller builds one for this).
    Returns the unwrapped model, whose names are those the freezing plan decides on.
    """
    if not training_args.lora_enable:
        return model
    from peft import get_peft_model

    with torch.device("meta"):
        return get_peft_model(model, lora_config(model, training_args)).get_base_model()


def training_option_problems(arguments) -> list[str]:
    """Combinations of the LoRA / 4-8-bit flags that cannot train, each naming the flags and a fix."""
    model_args, _, training = arguments.as_tuple()
    problems: list[str] = []
    try:
        parts = parse_tunable_parts(model_args.mm_tunable_parts)
    except ValueError:
        parts = None  # reported by preflight's tunable-parts check
    bits = f"--bits {training.bits}"
    if training.bits in QUANTIZED_BITS:
        if not training.lora_enable:
            problems.append(
                f"{bits} without --lora_enable: quantized weights cannot train, and the Trainer refuses to "
                "fine-tune a purely quantized model. Fix: --lora_enable true (QLoRA), or --bits 16"
            )
        if parts and "mm_language_model" in parts:
            problems.append(
                f"{bits} with --mm_tunable_parts {model_args.mm_tunable_parts}: mm_language_model would "
                "unfreeze the LLM's quantized linear weights, which cannot train. Fix: mm_lora_layer "
                "instead of mm_language_model, or --bits 16"
            )
    if training.lora_enable and parts is not None and not {"mm_lora_layer", "mm_language_model"} & set(parts):
        problems.append(
            f"--lora_enable with --mm_tunable_parts {model_args.mm_tunable_parts}: the LoRA layers would "
            "be added but never train (as published, only mm_lora_layer, or mm_language_model, unfreezes "
            "them). Fix: add mm_lora_layer to --mm_tunable_parts"
        )
    if not training.lora_enable and parts and "mm_lora_layer" in parts and set(parts) - {"mm_lora_layer"}:
        problems.append(
            f"--mm_tunable_parts {model_args.mm_tunable_parts} without --lora_enable: this model has no "
            "LoRA layers for mm_lora_layer to train. Fix: --lora_enable true, or drop mm_lora_layer"
        )
    problems += _weight_path_problems(training)
    return problems


def _weight_path_problems(training) -> list[str]:
    path = training.lora_weight_path
    if not path:
        return []
    if not training.lora_enable:
        return [
            f"--lora_weight_path {path} without --lora_enable: there are no LoRA layers to load it into. "
            "Fix: --lora_enable true, or drop --lora_weight_path"
        ]
    weights = adapter_weights_file(path)
    if not weights.is_file():
        return [
            f"--lora_weight_path {path}: no {ADAPTER_WEIGHTS} there. Fix: the output_dir of an earlier "
            "--lora_enable run (or the adapter file itself)"
        ]
    config_file = weights.parent / ADAPTER_CONFIG
    if config_file.is_file():
        rank = json.loads(config_file.read_text()).get("r")
        if rank is not None and rank != training.lora_r:
            return [
                f"--lora_weight_path {path}: the adapter has rank {rank} but --lora_r is {training.lora_r}. "
                f"Fix: --lora_r {rank}"
            ]
    return []


def machine_problems(training) -> list[str]:
    """What `--bits 4|8` needs from the launch: the bitsandbytes package, and a strategy that
    can hold quantized weights. Asked with the launch's DeepSpeed config in `training.deepspeed`
    (the flow's environment stage puts a LaunchConfig's there)."""
    from streamvln_model.config.strategies import read_strategy

    if training.bits not in QUANTIZED_BITS:
        return []
    bits = f"--bits {training.bits}"
    problems = []
    if bitsandbytes_missing():
        problems.append(
            f"{bits}: needs the bitsandbytes package, which is not installed. "
            "Fix: pip install 'bitsandbytes>=0.50.2', or --bits 16"
        )
    if read_strategy(training).kind == "zero3":
        problems.append(
            f"{bits} with --deepspeed {training.deepspeed} (ZeRO stage 3): the published QLoRA setup "
            "(uint8 4-bit storage, one device map per rank) cannot be partitioned by ZeRO-3, which "
            "shards floating-point weights only. Fix: a ZeRO-2 config (configs/deepspeed/zero2.json) "
            "or plain DDP"
        )
    if training.fsdp:
        problems.append(
            f"{bits} with --fsdp: FSDP shards floating-point weights only and the published QLoRA "
            "setup stores them as uint8 (8-bit weights cannot be sharded at all). Fix: plain DDP or "
            "DeepSpeed ZeRO-2"
        )
    return problems
