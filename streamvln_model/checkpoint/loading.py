"""Load any final save of a training run with one call: `load_trained(path)`.

A run saves one of three layouts (save.py `save_trained_model`, as the published script does,
but in safetensors):

* full: the whole model (config.json + model.safetensors), loaded with `from_pretrained`;
* LoRA (`--lora_enable`): adapter_model.safetensors + adapter_config.json (peft's layout), the
  other trained weights in non_lora_trainables.safetensors (published: non_lora_trainables.bin,
  same names), and config.json; the base checkpoint is NOT copied;
* projector only (only the projector trained: `--mm_tunable_parts mm_mlp_adapter` or
  `--tune_mm_mlp_adapter`): mm_projector.safetensors (published: mm_projector.bin) + config.json.

The two partial layouts also hold `trained_from.json`: the base checkpoint's absolute path, the
weight dtype, and the layout. The base is rebuilt exactly as training had it (the run's
config.json, 4/8-bit quantization with the run's settings), so the loaded model gives the
trained model's logits; the saved weights then replace the base's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from streamvln_model.checkpoint.adapters import ADAPTER_CONFIG
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.modeling import StreamVLNForCausalLM

FULL, LORA, PROJECTOR = "full", "lora", "projector"
SAVE_RECORD = "trained_from.json"
NON_LORA_WEIGHTS = "non_lora_trainables.safetensors"
PROJECTOR_WEIGHTS = "mm_projector.safetensors"
WEIGHT_FILE = "model.safetensors"
WEIGHT_INDEX = "model.safetensors.index.json"  # a sharded save: weight name -> shard file
FULL_WEIGHTS = (WEIGHT_FILE, WEIGHT_INDEX)


class SaveLayoutError(ValueError):
    """A partial save cannot be loaded: its base or one of its files is missing or does not fit."""


def save_format(path: str | Path) -> str:
    """ "full", "lora" or "projector", from the files in the folder."""
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        return LORA
    if (path / PROJECTOR_WEIGHTS).is_file() and not any((path / name).is_file() for name in FULL_WEIGHTS):
        return PROJECTOR
    return FULL


def weight_shards(path: str | Path) -> list[str]:
    """The safetensors files of a full save (or a base checkpoint): the shards its index names,
    else `model.safetensors`; none when the folder has neither."""
    path = Path(path)
    if (path / WEIGHT_INDEX).is_file():
        return sorted(set(json.loads((path / WEIGHT_INDEX).read_text())["weight_map"].values()))
    return [WEIGHT_FILE] if (path / WEIGHT_FILE).is_file() else []


def read_record(path: str | Path) -> dict[str, Any]:
    record = Path(path) / SAVE_RECORD
    return json.loads(record.read_text()) if record.is_file() else {}


def write_record(path: str | Path, layout: str, base_model: str | Path, dtype: torch.dtype) -> None:
    record = {"format": layout, "base_model": str(Path(base_model).resolve()), "dtype": str(dtype)}
    (Path(path) / SAVE_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def base_checkpoint(path: str | Path, base: str | Path | None = None) -> Path:
    """The base checkpoint of a partial save: `base` if given, else the recorded one (our record,
    then the adapter's `base_model_name_or_path`)."""
    path = Path(path)
    candidates = [base] if base else [read_record(path).get("base_model")]
    if not base and (path / ADAPTER_CONFIG).is_file():
        candidates.append(json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    named = ", ".join(str(c) for c in candidates if c) or "none recorded"
    raise SaveLayoutError(
        f"{path}: a {save_format(path)} save needs its base checkpoint ({named}), which is not there. "
        "Fix: load_trained(path, base=<the checkpoint the run started from>)"
    )


def run_config(path: str | Path) -> tuple[StreamVLNConfig, dict[str, Any] | None]:
    """The run's config.json (config overwrites applied) without its quantization settings, and
    those settings: the base weights on disk are not quantized, so they are passed separately."""
    config = StreamVLNConfig.from_pretrained(path)
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None:
        del config.quantization_config
        quantization = quantization if isinstance(quantization, dict) else quantization.to_dict()
    return config, quantization


def _dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name.removeprefix("torch.")) if name else None


def load_trained(
    path: str | Path,
    merge: bool = False,
    *,
    base: str | Path | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> nn.Module:
    """The trained model of any save in `path` (full, LoRA or projector-only), on the CPU.

    `merge=True` folds the LoRA weights into the base weights and returns a plain
    StreamVLNForCausalLM (for a 4/8-bit run peft re-quantizes the merged weights, so logits move
    by the quantization error); otherwise a LoRA save comes back as a peft model. `base`
    overrides the recorded base checkpoint (e.g. after moving it). `dtype` defaults to the
    dtype the run trained in.
    """
    path = Path(path)
    layout = save_format(path)
    options: dict[str, Any] = {}
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    if layout == FULL:
        return StreamVLNForCausalLM.from_pretrained(path, **({"dtype": dtype} if dtype else {}), **options)
    config, quantization = run_config(path)
    weight_dtype = dtype or _dtype(read_record(path).get("dtype")) or torch.float32
    if quantization:
        from transformers import BitsAndBytesConfig

        options.update(quantization_config=BitsAndBytesConfig.from_dict(quantization), device_map={"": "cpu"})
    model = StreamVLNForCausalLM.from_pretrained(
        base_checkpoint(path, base), config=config, dtype=weight_dtype, **options
    )
    if layout == PROJECTOR:
        load_named(model, path / PROJECTOR_WEIGHTS)
        return model
    return _with_adapter(model, path, weight_dtype, quantized=quantization is not None, merge=merge)


def _with_adapter(
    model: StreamVLNForCausalLM, path: Path, weight_dtype: torch.dtype, quantized: bool, merge: bool
) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    from streamvln_model.checkpoint.adapters import load_adapter_weights
    from streamvln_model.model.quantization import kbit_training_dtypes

    config = LoraConfig.from_pretrained(str(path))
    config.inference_mode = True
    peft_model = get_peft_model(model, config)
    load_adapter_weights(peft_model, path)
    if (path / NON_LORA_WEIGHTS).is_file():
        load_named(peft_model, path / NON_LORA_WEIGHTS)
    if quantized:
        kbit_training_dtypes(peft_model, weight_dtype)  # the dtypes the trained model had
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model


def load_named(model: nn.Module, file: Path) -> None:
    """Copy the tensors of `file` into the parameters of the same names; every name must exist.
    (Also used when a LoRA run resumes from a checkpoint-N folder, staging.py.)"""
    from safetensors.torch import load_file

    tensors = load_file(str(file))
    unexpected = sorted(set(tensors) - {name for name, _ in model.named_parameters()})
    if unexpected:
        raise SaveLayoutError(
            f"{file}: weights {unexpected[:3]} are not parameters of the model it belongs to"
        )
    model.load_state_dict(tensors, strict=False)
