"""`StreamVLNConfig`: a Qwen2 config extended with the LLaVA-Video multimodal fields.

Checkpoints in the wild carry `model_type` "qwen2" (published StreamVLN saves), "llava" /
"llava_qwen" (LLaVA-Video); all load through this class. Unknown LLaVA fields are kept as
attributes so that a load/save round trip does not lose them.

Saved config.json files are written the way published StreamVLN checkpoints are, so the published
code (transformers 4.45: `AutoConfig.from_pretrained`) reads them: `model_type` "qwen2" (4.45 does
not know "streamvln"), and the RoPE settings also under the 4.x keys `rope_theta` / `rope_scaling`
(4.x ignores transformers 5's `rope_parameters` and would silently fall back to theta 10000).
In memory the class keeps `model_type` "streamvln", the key registered with `AutoConfig`, so
folders saved before this change still load through the Auto classes.
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE

POOL_MODES = ("bilinear", "average", "max")
# What config.json says: the published checkpoints' model type (`architectures` names our class).
PUBLISHED_MODEL_TYPE = "qwen2"
# Model types whose config.json this class reads as its own (no "different model type" warning).
LOADABLE_MODEL_TYPES = ("streamvln", "qwen2", "llava", "llava_qwen")


def published_config_dict(config_dict: dict[str, Any]) -> dict[str, Any]:
    """`config_dict` as the published code reads it: model type qwen2 plus the 4.x RoPE/dtype keys.

    Only adds or renames keys; transformers 5 reads the result back to the same config (its
    `rope_scaling` wins over `rope_parameters` on load and gets `rope_theta` back, so
    `rope_scaling` carries every `rope_parameters` entry except `rope_theta`).
    """
    out = dict(config_dict)
    out["model_type"] = PUBLISHED_MODEL_TYPE
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:  # one global RoPE (Qwen2 has no per-layer RoPE)
        out["rope_theta"] = rope["rope_theta"]
        scaling = {key: value for key, value in rope.items() if key != "rope_theta"}
        is_plain = set(scaling) <= {"rope_type"} and scaling.get("rope_type", "default") == "default"
        out["rope_scaling"] = None if is_plain else scaling
    if out.get("dtype") is not None:
        out.setdefault("torch_dtype", out["dtype"])  # the 4.x name of `dtype`
    return out


@strict
class StreamVLNConfig(Qwen2Config):
    """Field names follow LLaVA-NeXT so that published checkpoints load unchanged."""

    model_type = "streamvln"

    mm_vision_tower: str | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int | None = None
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    # How many final encoder layers of the public tower the stored weights omit; LLaVA stores
    # SigLIP without its last layer. Absent in LLaVA checkpoints, hence the default 1.
    mm_vision_tower_dropped_layers: int = 1
    mm_spatial_pool_mode: str = "bilinear"
    mm_spatial_pool_stride: int = 2
    mm_patch_merge_type: str = "flat"
    mm_newline_position: str = "grid"
    image_aspect_ratio: str = "square"
    tokenizer_model_max_length: int | None = None
    tokenizer_padding_side: str = "right"
    num_history: int | None = STREAMVLN_SHAPE.num_history
    num_future_steps: int = STREAMVLN_SHAPE.num_future_steps
    mm_tunable_parts: str | None = None
    # Our addition: the SigLIP config of the tower *as stored* (last layer already removed).
    # Absent in LLaVA checkpoints; then it is resolved from `mm_vision_tower` (vision.py).
    vision_config: dict | None = None

    def __post_init__(self, **kwargs):
        if self.mm_spatial_pool_mode not in POOL_MODES:
            raise ValueError(
                f"mm_spatial_pool_mode={self.mm_spatial_pool_mode!r} is not supported; "
                f"use one of {', '.join(POOL_MODES)}"
            )
        if self.mm_projector_type != "mlp2x_gelu":
            raise ValueError(
                f"mm_projector_type={self.mm_projector_type!r} is not supported; StreamVLN uses 'mlp2x_gelu'"
            )
        super().__post_init__(**kwargs)

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path, **kwargs
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read qwen2/llava/llava_qwen configs as ours, so loading our own saves warns about nothing."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") in LOADABLE_MODEL_TYPES:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config.json text (every save goes through here): the published layout, see the module doc."""
        config_dict = json.loads(super().to_json_string(use_diff=use_diff))
        return json.dumps(published_config_dict(config_dict), indent=2, sort_keys=True) + "\n"
