"""Build model, tokenizer and image processor from the parsed arguments.

Shared by the flow's planning tasks (meta device, nothing loaded) and the torchrun worker (real
weights), so both apply the same config overwrites and checks. Whether a checkpoint's weights fit
the config is read from its safetensors headers by checkpoint/headers.py.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from streamvln_model.config.arguments import DataArguments, ModelArguments, TrainingArguments
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.conversation import TokenSpec, prepare_tokenizer
from streamvln_model.model.modeling import StreamVLNForCausalLM
from streamvln_model.model.precision import weight_dtype
from streamvln_model.model.quantization import quantized_load_options


def tokenizer_path(model_args: ModelArguments) -> str | None:
    """`--tokenizer_name_or_path`, else the checkpoint folder (which normally holds the tokenizer)."""
    return model_args.tokenizer_name_or_path or model_args.model_name_or_path


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
        "mm_vision_select_layer": model_args.mm_vision_select_layer,
        "mm_vision_select_feature": model_args.mm_vision_select_feature,
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


def load_model(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> StreamVLNForCausalLM:
    config = model_config(model_args, data_args, training_args)
    return StreamVLNForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        dtype=weight_dtype(training_args),
        attn_implementation=training_args.attn_implementation,
        **quantized_load_options(training_args),  # --bits 4|8: bitsandbytes, on this rank's device
    )


def load_prepared_tokenizer(model_args: ModelArguments) -> tuple[PreTrainedTokenizerBase, TokenSpec]:
    """The run's tokenizer with <image>/<memory> added and the chat template set."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(model_args), padding_side="right")
    return tokenizer, prepare_tokenizer(tokenizer, model_args.version)
