"""LoRA adapter files: peft's `adapter_model.safetensors` + `adapter_config.json`, and the other
trained weights that go beside them (`non_lora_trainables`, by their peft names as published).

The LoRA targets, config and wrapper are model/lora.py; which layout a save has is loading.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from streamvln_model.model.freezing import LORA_KEY

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_weights_file(path: str | Path) -> Path:
    """`adapter_model.safetensors` of an adapter folder (or the file itself)."""
    path = Path(path)
    return path / ADAPTER_WEIGHTS if path.is_dir() else path


def load_adapter_weights(peft_model: nn.Module, path: str | Path) -> None:
    """Copy an earlier adapter's LoRA weights into `peft_model`; every LoRA weight must be there.

    A partial match would silently train some layers from scratch, so any LoRA weight the file
    lacks, or any file weight the model has no place for, is an error naming them.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(adapter_weights_file(path)))
    result = set_peft_model_state_dict(peft_model, weights)
    missing = [name for name in result.missing_keys if LORA_KEY in name]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"--lora_weight_path {path}: the adapter does not fit this model's LoRA layers "
            f"(missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}). Fix: an adapter "
            "saved by a run with the same checkpoint and --lora_r"
        )


def non_lora_trainables(model: nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor] | None:
    """The trained weights outside the adapter, by their peft names (as published), on the CPU:
    from `state_dict` when given (a consolidated one), else from the parameters; None when they
    are not all at hand (a sharded model without a consolidated state dict)."""
    names = [name for name, param in model.named_parameters() if param.requires_grad and LORA_KEY not in name]
    params = dict(model.named_parameters())
    if state_dict is not None:
        if not all(name in state_dict for name in names):
            return None
        return {name: state_dict[name].detach().cpu().contiguous() for name in names}
    if any(hasattr(params[name], "ds_id") or hasattr(params[name], "full_tensor") for name in names):
        return None
    return {name: params[name].detach().cpu().contiguous() for name in names}
