"""Frame loading and SigLIP preprocessing with Pillow and numpy only.

The pixels equal what the transformers SigLIP image processor (`SiglipImageProcessorPil`) gives
for the same images, within float32 rounding (one ulp): RGB conversion (transparency composited
onto white), a Pillow resize of the uint8 image to the processor's `size` with its `resample`
filter, then `(x * rescale_factor - image_mean) / image_std` in CHW. The processor gets there via
numpy CHW/HWC round trips and a float64 rescale per image, about 30% of a navigation loader
worker's CPU; here the resize runs on the decoded image directly and the rescale and normalise
are one float32 multiply-add per batch. Every setting is read from the processor object, so any
SigLIP configuration (size, filter, mean/std) gives its own pixels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import SiglipImageProcessorPil

from streamvln_model.data import locations as storage
from streamvln_model.data.media.augmentation import augment_image

WHITE = (255, 255, 255, 255)


@dataclass(frozen=True)
class PixelSpec:
    """What the processor does to an RGB image, as the constants of one affine map per channel."""

    height: int
    width: int
    resample: int
    scale: np.ndarray  # [3, 1, 1] float32: rescale_factor / image_std
    offset: np.ndarray  # [3, 1, 1] float32: -image_mean / image_std


def _per_channel(value, name: str) -> np.ndarray:
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.size != 3:
        raise ValueError(f"image processor field {name}={value!r}: need one value or three (R, G, B)")
    return values


def _size_field(size, name: str) -> int | None:
    """`size[name]` for a plain dict or transformers' `SizeDict` (attributes)."""
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


def pixel_spec(processor: SiglipImageProcessorPil) -> PixelSpec:
    """Read size, filter, rescale factor, mean and std from the processor (any SigLIP config).

    Only the steps a SigLIP processor uses are supported: a fixed height x width resize and no
    crop or padding; anything else is refused by name rather than silently preprocessed wrong.
    """
    size = processor.size
    height, width = _size_field(size, "height"), _size_field(size, "width")
    if not getattr(processor, "do_resize", True) or not height or not width:
        raise ValueError(
            f"image processor size={size!r}, do_resize={getattr(processor, 'do_resize', None)}: "
            "fast preprocessing needs do_resize=True with size {'height': H, 'width': W} (as SigLIP uses)"
        )
    for flag in ("do_center_crop", "do_pad"):
        if getattr(processor, flag, None):
            raise ValueError(
                f"image processor {flag}=True is not supported (SigLIP does not use it); set it False"
            )
    rescale = float(processor.rescale_factor) if processor.do_rescale else 1.0
    mean, std = np.zeros(3), np.ones(3)
    if processor.do_normalize:
        mean, std = (
            _per_channel(processor.image_mean, "image_mean"),
            _per_channel(processor.image_std, "image_std"),
        )
    resample = processor.resample if processor.resample is not None else Image.Resampling.BILINEAR
    return PixelSpec(
        height=int(height),
        width=int(width),
        resample=int(resample),
        scale=(rescale / std).astype(np.float32).reshape(3, 1, 1),
        offset=(-mean / std).astype(np.float32).reshape(3, 1, 1),
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in RGB mode as the processor converts it: transparency composited onto white.

    Already-RGB images without transparency come back as they are (no copy).
    """
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode one frame as RGB the way the published dataset does (`Image.open(f).convert('RGB')`).

    Unlike `to_rgb`, transparency is dropped rather than composited, as StreamVLN's training
    code does; navigation frames are JPEG (always RGB), so they come back without a copy.
    """
    with Image.open(storage.local_path(str(path))) as image:
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")


def preprocess_images(
    processor: SiglipImageProcessorPil,
    images: Sequence[Image.Image],
    *,
    augment: random.Random | None = None,
) -> torch.Tensor:
    """`[len(images), 3, S, S]` float32 pixels, equal to `processor(images=...)` within float32 rounding.

    With `augment`, each image gets the published data augmentation (`augmentation.augment_image`)
    with that generator, in order, after the RGB conversion and before the resize, as published.
    """
    spec = pixel_spec(processor)
    pixels = np.empty((len(images), 3, spec.height, spec.width), dtype=np.float32)
    for k, image in enumerate(images):
        rgb = to_rgb(image)
        if augment is not None:
            rgb = augment_image(rgb, augment)
        resized = rgb.resize((spec.width, spec.height), resample=spec.resample)
        # HWC uint8 read through a CHW view: the only layout change, fused into the multiply.
        np.multiply(np.asarray(resized).transpose(2, 0, 1), spec.scale, out=pixels[k])
    pixels += spec.offset
    return torch.from_numpy(pixels)


def preprocess_frames(
    processor: SiglipImageProcessorPil,
    paths: Sequence[str | Path],
    *,
    augment: random.Random | None = None,
) -> torch.Tensor:
    """`[len(paths), 3, S, S]` float32 pixels of the frame files, in order (see `preprocess_images`)."""
    return preprocess_images(processor, [load_rgb(p) for p in paths], augment=augment)
