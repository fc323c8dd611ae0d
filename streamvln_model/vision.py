"""The SigLIP vision tower, the `mlp2x_gelu` projector and the 2D token pooling.

LLaVA checkpoints store the tower with its last encoder layer already removed; features are the
output of the remaining layers, before `post_layernorm` (the "penultimate layer" features). The
tower's sizes come from its own config, never from hard-coded constants.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

# Public SigLIP towers used by LLaVA-Video / StreamVLN, as stored in those checkpoints
# (27 layers upstream, 26 kept). Source: the towers' config.json on the Hugging Face hub.
_SO400M_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}
KNOWN_TOWERS: dict[str, dict] = {
    "google/siglip-so400m-patch14-384": _SO400M_384,
    "google/siglip2-so400m-patch14-384": _SO400M_384,
}


def resolve_vision_config(config) -> SiglipVisionConfig:
    """Find the stored tower's config: embedded dict, local tower folder, or a known public tower."""
    if config.vision_config:
        return SiglipVisionConfig(**{**config.vision_config, "vision_use_head": False})
    tower = config.mm_vision_tower
    if tower and (Path(tower) / "config.json").is_file():
        # A full SigLIP checkpoint on disk: the LLaVA loader drops its last layer. Hub configs list
        # only non-default fields, so a missing depth means SigLIP's own default, not so400m's 27.
        raw = json.loads((Path(tower) / "config.json").read_text())
        raw = raw.get("vision_config", raw)
        raw["num_hidden_layers"] = raw.get("num_hidden_layers", SiglipVisionConfig().num_hidden_layers) - 1
        return SiglipVisionConfig(**{**raw, "vision_use_head": False})
    for name, sizes in KNOWN_TOWERS.items():
        if tower and (tower == name or tower.rstrip("/").endswith(name.split("/")[-1])):
            return SiglipVisionConfig(**sizes, vision_use_head=False)
    raise ValueError(
        f"cannot determine the vision tower's config: the model config has no `vision_config` and "
        f"mm_vision_tower={tower!r} is neither a local SigLIP folder nor one of {sorted(KNOWN_TOWERS)}. "
        "Fix: add a `vision_config` dict to config.json or point mm_vision_tower at a local SigLIP folder."
    )


class _TowerHolder(nn.Module):
    """Exists only so weight names read `vision_tower.vision_tower.vision_model.*` (LLaVA layout)."""

    def __init__(self, vision_config: SiglipVisionConfig):
        super().__init__()
        self.vision_model = SiglipVisionModel(vision_config)


class SiglipTower(nn.Module):
    """SigLIP patch features from the stored (already truncated) encoder, before post_layernorm."""

    def __init__(self, vision_config: SiglipVisionConfig):
        super().__init__()
        self.config = vision_config
        self.vision_tower = _TowerHolder(vision_config)

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        siglip = self.vision_tower.vision_model
        dtype = siglip.embeddings.patch_embedding.weight.dtype
        hidden = siglip.embeddings(pixel_values.to(dtype))
        return siglip.encoder(inputs_embeds=hidden).last_hidden_state


def build_projector(vision_hidden: int, llm_hidden: int) -> nn.Sequential:
    """`mlp2x_gelu`: indices 0 and 2 carry the weights, matching `mm_projector.0/2.*` keys."""
    return nn.Sequential(nn.Linear(vision_hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))


def pooled_side(grid: int, stride: int, mode: str) -> int:
    """Side of the pooled grid: bilinear rounds up (27 -> 14), average/max pooling rounds down."""
    return math.ceil(grid / stride) if mode == "bilinear" else grid // stride


def tokens_per_frame(grid: int, stride: int, mode: str) -> int:
    return pooled_side(grid, stride, mode) ** 2


def pool_2d(features: torch.Tensor, grid: int, stride: int, mode: str) -> torch.Tensor:
    """Pool `[frames, grid*grid, dim]` patch tokens on their 2D grid to `[frames, side*side, dim]`."""
    frames, patches, dim = features.shape
    if patches != grid * grid:
        raise ValueError(f"expected {grid}x{grid}={grid * grid} patches per frame, got {patches}")
    x = features.view(frames, grid, grid, dim).permute(0, 3, 1, 2)
    if mode == "bilinear":
        side = pooled_side(grid, stride, mode)
        x = nn.functional.interpolate(x, size=(side, side), mode="bilinear")
    elif mode == "average":
        x = nn.functional.avg_pool2d(x, stride)
    elif mode == "max":
        x = nn.functional.max_pool2d(x, stride)
    else:
        raise ValueError(f"unknown mm_spatial_pool_mode {mode!r}")
    return x.permute(0, 2, 3, 1).reshape(frames, -1, dim)


def build_image_processor(vision_config: SiglipVisionConfig) -> SiglipImageProcessorPil:
    """SigLIP preprocessing at the tower's own resolution (Pillow backend: no torchvision here)."""
    size = vision_config.image_size
    return SiglipImageProcessorPil(
        size={"height": size, "width": size},
        resample=3,  # PIL.Image.BICUBIC
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
