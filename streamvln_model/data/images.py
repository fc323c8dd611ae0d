"""Frame loading and SigLIP preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import SiglipImageProcessorPil


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def preprocess_frames(processor: SiglipImageProcessorPil, paths: Sequence[str | Path]) -> torch.Tensor:
    """`[len(paths), 3, S, S]` float pixels, one batched processor call per sample."""
    images = [load_rgb(p) for p in paths]
    return processor(images=images, return_tensors="pt")["pixel_values"]
