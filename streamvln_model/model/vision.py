"""The SigLIP vision tower, the `mlp2x_gelu` projector and the 2D token pooling.

LLaVA checkpoints store the tower with its last encoder layer already removed
(`mm_vision_tower_dropped_layers`, default 1); by default features are the output of the
remaining layers, before `post_layernorm` (the "penultimate layer" features of the full tower,
`mm_vision_select_layer=-2`). `mm_vision_select_layer` counts in the FULL public tower's
`output_hidden_states` (0 = embeddings, -1 = its last layer), so a value means the same layer
whatever the checkpoint stores; only the encoder layers up to the selected one run. The tower's
sizes come from its own config, never from hard-coded constants.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

# Public SigLIP towers used by LLaVA-Video / StreamVLN, at their full public depth (27 layers;
# LLaVA checkpoints store 26). Source: the towers' config.json on the Hugging Face hub.
_SO400M_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
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


SELECT_FEATURES = ("patch", "cls_patch")  # identical for SigLIP, which has no CLS token


def dropped_layers(config) -> int:
    """Final encoder layers of the public tower the stored weights omit (absent in LLaVA: 1)."""
    return getattr(config, "mm_vision_tower_dropped_layers", 1)


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
        full = raw.get("num_hidden_layers", SiglipVisionConfig().num_hidden_layers)
        raw["num_hidden_layers"] = full - dropped_layers(config)
        return SiglipVisionConfig(**{**raw, "vision_use_head": False})
    for name, sizes in KNOWN_TOWERS.items():
        if tower and (tower == name or tower.rstrip("/").endswith(name.split("/")[-1])):
            stored = sizes["num_hidden_layers"] - dropped_layers(config)
            return SiglipVisionConfig(**{**sizes, "num_hidden_layers": stored}, vision_use_head=False)
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


def _layer_problem(select_layer: int, stored: int, dropped: int) -> str | None:
    """Why `select_layer` cannot be served by a tower storing `stored` of `stored + dropped`
    layers, or None."""
    if dropped < 0:
        return f"mm_vision_tower_dropped_layers={dropped}: must be 0 or more (LLaVA checkpoints: 1)"
    full = stored + dropped
    index = select_layer if select_layer >= 0 else full + 1 + select_layer
    if not 0 <= index <= full:
        return (
            f"--mm_vision_select_layer {select_layer}: out of range for the {full}-layer vision tower "
            f"(hidden states 0..{full}, or -{full + 1}..-1 from the end). "
            "Fix: pass -2 (the published default)"
        )
    if index > stored:
        return (
            f"--mm_vision_select_layer {select_layer}: needs layer {index} of the {full}-layer public "
            f"vision tower, but the checkpoint stores only its first {stored} layers "
            f"(mm_vision_tower_dropped_layers={dropped}; LLaVA checkpoints omit the last layer). "
            f"Fix: pass --mm_vision_select_layer {-(dropped + 1)} (the last stored layer; -2 for LLaVA "
            f"checkpoints) or an earlier layer (0..{stored}, or -{full + 1}..{-(dropped + 1)})"
        )
    return None


def select_feature_problem(select_feature: str) -> str | None:
    """Why `select_feature` is refused, or None: SigLIP has no CLS token to drop or keep."""
    if select_feature in SELECT_FEATURES:
        return None
    return (
        f"--mm_vision_select_feature {select_feature!r}: not supported. SigLIP has no CLS token, so "
        f"{' and '.join(map(repr, SELECT_FEATURES))} both give the patch features. Fix: pass patch"
    )


def select_layer_problem(config) -> str | None:
    """Why the config's `mm_vision_select_layer` cannot be served by its stored tower, or None.

    Reads the config only, so preflight can say it before weights load (the model would
    refuse the same value at construction).
    """
    stored = resolve_vision_config(config).num_hidden_layers
    return _layer_problem(config.mm_vision_select_layer, stored, dropped_layers(config))


def vision_select_problems(config) -> list[str]:
    """Both select checks (layer and feature) for preflight, from the config alone."""
    problems = [select_layer_problem(config), select_feature_problem(config.mm_vision_select_feature)]
    return [p for p in problems if p]


def selected_layer_count(select_layer: int, stored: int, dropped: int) -> int:
    """How many encoder layers to run so their output is the selected hidden state."""
    problem = _layer_problem(select_layer, stored, dropped)
    if problem:
        raise ValueError(problem)
    full = stored + dropped
    return select_layer if select_layer >= 0 else full + 1 + select_layer


class SiglipTower(nn.Module):
    """SigLIP patch features of the selected layer, before post_layernorm.

    The stored encoder may be shorter than the public one (`dropped_layers`); `select_layer`
    counts in the public tower's hidden states, and only the layers up to it run.
    """

    def __init__(
        self,
        vision_config: SiglipVisionConfig,
        select_layer: int = -2,
        select_feature: str = "patch",
        dropped_layers: int = 1,
    ):
        super().__init__()
        problem = select_feature_problem(select_feature)
        if problem:
            raise ValueError(problem)
        self.config = vision_config
        self.layers_run = selected_layer_count(select_layer, vision_config.num_hidden_layers, dropped_layers)
        self.vision_tower = _TowerHolder(vision_config)

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    def unused_parameter_names(self) -> list[str]:
        """Stored weights the features never pass through: post_layernorm, layers past the selected one."""
        siglip = self.vision_tower.vision_model
        unused = [
            f"vision_tower.vision_model.post_layernorm.{n}"
            for n, _ in siglip.post_layernorm.named_parameters()
        ]
        for index in range(self.layers_run, len(siglip.encoder.layers)):
            layer = siglip.encoder.layers[index]
            unused += [
                f"vision_tower.vision_model.encoder.layers.{index}.{n}" for n, _ in layer.named_parameters()
            ]
        return unused

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        siglip = self.vision_tower.vision_model
        dtype = siglip.embeddings.patch_embedding.weight.dtype
        hidden = siglip.embeddings(pixel_values.to(dtype))
        # The loop SiglipEncoder.forward runs (no attention mask), stopped at the selected layer.
        for layer in siglip.encoder.layers[: self.layers_run]:
            hidden = layer(hidden, None)
        return hidden


def build_projector(vision_hidden: int, llm_hidden: int) -> nn.Sequential:
    """`mlp2x_gelu`: indices 0 and 2 carry the weights, matching `mm_projector.0/2.*` keys."""
    return nn.Sequential(nn.Linear(vision_hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))


def pooled_side(grid: int, stride: int, mode: str) -> int:
    """Side of the pooled grid: bilinear rounds up (27 -> 14), average/max pooling rounds down."""
    return math.ceil(grid / stride) if mode == "bilinear" else grid // stride


def tokens_per_frame(grid: int, stride: int, mode: str) -> int:
    return pooled_side(grid, stride, mode) ** 2


def frame_tokens(config) -> int:
    """Visual tokens one frame costs under a StreamVLN config (its tower and spatial pooling)."""
    tower = resolve_vision_config(config)
    return tokens_per_frame(
        tower.image_size // tower.patch_size, config.mm_spatial_pool_stride, config.mm_spatial_pool_mode
    )


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
