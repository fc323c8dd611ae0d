"""`--bits 4|8`: the LLM's linear layers load quantized with bitsandbytes (QLoRA), as published.

The published script passes a `BitsAndBytesConfig` built from the flags (threshold 6.0, no fp16
int8 weights, compute dtype from `--bf16/--fp16`, double quant, nf4/fp4) and then runs peft's
`prepare_model_for_kbit_training`. Two things are done differently, on purpose:

* The vision tower, the projector (and a resampler, if any) and `lm_head` are named in
  `llm_int8_skip_modules`: they are small, the projector and tower may train, and a quantized
  weight cannot. The published config lists no skip modules, so transformers would quantize the
  tower and projector too (and then the projector, which StreamVLN trains, could not train).
  transformers 5 matches these names from the start of a module name, hence the full prefixes.
* After freezing, the published script casts what `prepare_model_for_kbit_training` upcast to
  fp32 back to bf16 under `--bf16` (LoRA layers, embeddings, lm_head, projector, tower) but
  leaves the norms in fp32. That mix only runs under autocast (an fp32 final norm feeding a bf16
  lm_head fails without it), and the reload check, generation and the registered model run
  without autocast; `kbit_training_dtypes` therefore casts the norms back to bf16 as well, which
  is the dtype layout of every other `--bf16` run (Qwen2's RMSNorm computes in fp32 inside).
  Under `--fp16` the published script would cast the projector (and the tower) to fp16, which
  the GradScaler refuses for trainable weights ("Attempting to unscale FP16 gradients"); here
  they keep fp32 master weights, as everywhere else (precision.py).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from streamvln_model.model.precision import compute_dtype

QUANTIZED_BITS = (4, 8)
# Module-name prefixes bitsandbytes leaves in full precision (transformers 5 matches them from the
# start of a module name; transformers 4.x, as a substring, which these also satisfy).
SKIP_MODULES = ("model.vision_tower", "model.mm_projector", "model.vision_resampler", "lm_head")


def is_quantized_run(training_args) -> bool:
    return training_args.bits in QUANTIZED_BITS


def bnb_config(training_args):
    """The published BitsAndBytesConfig for `--bits 4|8` (plus the skip modules above)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=training_args.bits == 4,
        load_in_8bit=training_args.bits == 8,
        llm_int8_threshold=6.0,
        llm_int8_has_fp16_weight=False,
        llm_int8_skip_modules=list(SKIP_MODULES),
        bnb_4bit_compute_dtype=compute_dtype(training_args),
        bnb_4bit_use_double_quant=training_args.double_quant,
        bnb_4bit_quant_type=training_args.quant_type,
    )


def quantized_load_options(training_args) -> dict:
    """Extra `from_pretrained` options of a 4/8-bit run: the quantization and this rank's device.

    A quantized model cannot be moved after loading (the Trainer leaves it where it is), so it is
    loaded onto the rank's device directly, as the published script does.
    """
    if not is_quantized_run(training_args):
        return {}
    return {"quantization_config": bnb_config(training_args), "device_map": {"": str(training_args.device)}}


def prepare_for_kbit_training(model: nn.Module, training_args) -> nn.Module:
    """peft's preparation, as published: freezes everything, upcasts non-quantized weights to fp32,
    enables gradient checkpointing with input gradients when the run checkpoints."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=bool(training_args.gradient_checkpointing)
    )


def kbit_training_dtypes(model: nn.Module, weight_dtype: torch.dtype) -> None:
    """Undo `prepare_model_for_kbit_training`'s fp32 upcast in a bf16 run: every non-quantized
    floating weight (LoRA layers included) back to bf16. fp32 and fp16 runs keep fp32 weights.

    Used by the worker after freezing and by `load_trained` on a quantized save, so a reloaded
    model has the very dtypes the trained one had (and gives the same logits). Quantized weights
    are integer tensors and are left alone.
    """
    if weight_dtype != torch.bfloat16:
        return
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != torch.bfloat16:
            param.data = param.data.to(torch.bfloat16)


def bitsandbytes_missing() -> bool:
    return importlib.util.find_spec("bitsandbytes") is None
