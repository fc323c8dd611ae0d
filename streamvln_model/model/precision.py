"""Which dtype the weights load in, and which precision flags a host can honour.

As published: `--bf16` loads bf16 weights (the published script passes torch_dtype=bfloat16) and
trains in pure bf16. `--fp16` does NOT load fp16 weights: the published script loads fp32 and
the Trainer runs fp16 autocast with fp32 master weights, because the GradScaler refuses fp16
gradients ("Attempting to unscale FP16 gradients"). Without either flag everything is fp32.

Not copied: the published script also casts the vision tower to fp16 whenever `--bf16` is not
set (so under `--fp16`, and in fp32 runs too), which leaves a trainable tower with fp16 weights
the GradScaler refuses and silently runs an "fp32" run's tower in fp16.

fp16 on a CPU host: accelerate (1.15 here) turns fp16 autocast and loss scaling off on CPU, so
a Trainer step runs, in plain fp32. That is allowed (tests/test_precision.py trains such a step).
"""

from __future__ import annotations

import torch


def weight_dtype(training_args) -> torch.dtype:
    """The dtype `from_pretrained` loads: bf16 under `--bf16`, else fp32 (fp16 AMP keeps fp32 masters)."""
    return torch.bfloat16 if training_args.bf16 else torch.float32


def compute_dtype(training_args) -> torch.dtype:
    """The dtype quantized layers compute in (`bnb_4bit_compute_dtype`), as published: fp16 under
    `--fp16`, bf16 under `--bf16`, else fp32. Unlike `weight_dtype`, fp16 counts here: a 4-bit
    matmul's inputs are cast anyway, and no trainable weight is stored in this dtype."""
    if training_args.fp16:
        return torch.float16
    return torch.bfloat16 if training_args.bf16 else torch.float32


def _device_type(device: str) -> str:
    return torch.device(device).type


def precision_problems(training_args, device: str) -> list[str]:
    """Precision flags this run cannot honour on `device` ("cpu", "cuda", "cuda:0", ...).

    transformers' TrainingArguments already refuses fp16 + bf16; checking again keeps preflight
    correct for arguments that did not go through its __post_init__ (e.g. edited plans).
    fp16 on CPU is not a problem: it runs (in fp32: accelerate has no fp16 autocast on CPU).
    """
    _device_type(device)  # an unknown device string fails here, not later in the worker
    problems = []
    if training_args.fp16 and training_args.bf16:
        problems.append("--fp16 and --bf16 are both set. Fix: pass only one (--bf16 true, as published)")
    return problems
