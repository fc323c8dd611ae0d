"""Build model, tokenizer and image processor from the parsed arguments.

Shared by the flow's planning tasks (meta device, nothing loaded) and the torchrun worker (real
weights), so both apply the same config overwrites and checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .arguments import UNSUPPORTED, DataArguments, ModelArguments, TrainingArguments
from .configuration import StreamVLNConfig
from .conversation import TokenSpec, prepare_tokenizer
from .data.errors import DataValidationError
from .data.sampling import validate_sampling
from .freezing import parse_tunable_parts
from .modeling import StreamVLNForCausalLM

WEIGHT_INDEX = "model.safetensors.index.json"
WEIGHT_FILE = "model.safetensors"


def tokenizer_path(model_args: ModelArguments) -> str | None:
    """`--tokenizer_name_or_path`, else the checkpoint folder (which normally holds the tokenizer)."""
    return model_args.tokenizer_name_or_path or model_args.model_name_or_path


def validate_arguments(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> None:
    """Every argument problem at once, before any data scan or process launch."""
    problems: list[str] = []
    path = Path(model_args.model_name_or_path or "")
    if not model_args.model_name_or_path:
        problems.append("--model_name_or_path: missing. Fix: pass a local checkpoint folder (LLaVA layout)")
    elif not (path / "config.json").is_file():
        problems.append(
            f"--model_name_or_path {path}: no config.json there. Fix: point it at a local checkpoint folder "
            "(`streamvln synth checkpoint OUT` makes a tiny one)"
        )
    tokenizer = Path(tokenizer_path(model_args) or "")
    if model_args.model_name_or_path and not (tokenizer / "tokenizer_config.json").is_file():
        problems.append(
            f"tokenizer folder {tokenizer}: no tokenizer_config.json. Fix: pass --tokenizer_name_or_path"
        )
    if not data_args.video_folder and not data_args.data_index:
        problems.append("--video_folder: missing. Fix: pass comma-separated trajectory folders")
    for flag, (is_set, why) in UNSUPPORTED.items():
        if is_set(model_args, data_args, training_args):
            problems.append(f"--{flag}: {why}")
    try:
        parse_tunable_parts(model_args.mm_tunable_parts)
    except ValueError as err:
        problems.append(str(err))
    try:
        validate_sampling(data_args.num_frames, data_args.num_history, data_args.num_future_steps)
    except DataValidationError as err:
        problems += err.problems
    if problems:
        raise DataValidationError(problems)


def compute_dtype(training_args: TrainingArguments) -> torch.dtype:
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def model_config(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> StreamVLNConfig:
    """The checkpoint's config with the run's overwrites (STREAMVLN.md §5 'Config overwrites')."""
    config = StreamVLNConfig.from_pretrained(model_args.model_name_or_path)
    if model_args.rope_scaling_factor and model_args.rope_scaling_type:
        config.rope_parameters = {
            **(config.rope_parameters or {}),
            "rope_type": model_args.rope_scaling_type,
            "factor": model_args.rope_scaling_factor,
        }
    overwrites = {
        "mm_spatial_pool_mode": model_args.mm_spatial_pool_mode,
        "mm_spatial_pool_stride": model_args.mm_spatial_pool_stride,
        "mm_newline_position": model_args.mm_newline_position,
        "mm_patch_merge_type": model_args.mm_patch_merge_type,
        "mm_tunable_parts": model_args.mm_tunable_parts,
        "num_history": data_args.num_history,
        "num_future_steps": data_args.num_future_steps,
        "tokenizer_model_max_length": training_args.model_max_length,
        "tokenizer_padding_side": "right",
    }
    for key, value in overwrites.items():
        if value is not None:
            setattr(config, key, value)
    config.use_cache = False  # training; restored to True when saving
    return config


def meta_model(config: StreamVLNConfig) -> StreamVLNForCausalLM:
    """The model's structure with no storage: counts and names at no memory cost."""
    with torch.device("meta"):
        return StreamVLNForCausalLM(config)


def checkpoint_keys(path: str | Path) -> set[str]:
    """Weight names from safetensors headers only (no tensor is read)."""
    path = Path(path)
    if (path / WEIGHT_INDEX).is_file():
        return set(json.loads((path / WEIGHT_INDEX).read_text())["weight_map"])
    if (path / WEIGHT_FILE).is_file():
        with safe_open(str(path / WEIGHT_FILE), framework="pt") as handle:
            return set(handle.keys())
    raise DataValidationError(
        [f"{path}: neither {WEIGHT_FILE} nor {WEIGHT_INDEX}. Fix: save the model as safetensors"]
    )


def check_checkpoint(path: str | Path, model: StreamVLNForCausalLM) -> dict[str, list[str]]:
    """Compare stored weight names with the model's; missing weights are an error before launch."""
    stored = checkpoint_keys(path)
    expected = set(model.state_dict())
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(expected - stored - tied)
    if missing:
        raise DataValidationError(
            [
                f"{path}: checkpoint lacks weight {name!r}. Fix: use a full StreamVLN/LLaVA-Video checkpoint"
                for name in missing
            ]
        )
    return {"missing": missing, "unexpected": sorted(stored - expected)}


def load_model(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> StreamVLNForCausalLM:
    config = model_config(model_args, data_args, training_args)
    return StreamVLNForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        dtype=compute_dtype(training_args),
        attn_implementation=training_args.attn_implementation,
    )


def load_prepared_tokenizer(model_args: ModelArguments) -> tuple[PreTrainedTokenizerBase, TokenSpec]:
    """The run's tokenizer with <image>/<memory> added and the chat template set."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(model_args), padding_side="right")
    return tokenizer, prepare_tokenizer(tokenizer, model_args.version)
