"""`StreamVLNConfig`: a Qwen2 config extended with the LLaVA-Video multimodal fields.

Checkpoints in the wild carry `model_type` "qwen2" (published StreamVLN saves), "llava" /
"llava_qwen" (LLaVA-Video); all load through this class. Unknown LLaVA fields are kept as
attributes so that a load/save round trip does not lose them.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config

POOL_MODES = ("bilinear", "average", "max")


@strict
class StreamVLNConfig(Qwen2Config):
    """Field names follow LLaVA-NeXT so that published checkpoints load unchanged."""

    model_type = "streamvln"

    mm_vision_tower: str | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int | None = None
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_spatial_pool_mode: str = "bilinear"
    mm_spatial_pool_stride: int = 2
    mm_patch_merge_type: str = "flat"
    mm_newline_position: str = "grid"
    image_aspect_ratio: str = "square"
    tokenizer_model_max_length: int | None = None
    tokenizer_padding_side: str = "right"
    num_history: int | None = 8
    num_future_steps: int = 4
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
