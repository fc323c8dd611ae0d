"""The published StreamVLN training augmentation (`data_augmentation`), with Pillow only.

StreamVLN (arXiv 2507.05240; github.com/InternRobotics/StreamVLN, `streamvln/streamvln_train.py`,
applied per frame in `streamvln/dataset/vln_action_dataset.py` after `convert('RGB')` and before
SigLIP preprocessing) trains with this torchvision `transforms.v2.Compose`:

1. `ColorJitter(brightness=0.2, saturation=0.2)`: always; brightness and saturation factors each
   uniform in [0.8, 1.2], the two applied in a random order;
2. `RandomPosterize(bits=4)`: with torchvision's default p=0.5, keep the top 4 bits per channel;
3. `RandomAdjustSharpness(sharpness_factor=1.5)`: p=0.5, blend the image away from its 3x3
   smoothed copy (kernel 1 1 1 / 1 5 1 / 1 1 1, border pixels kept) by factor 1.5;
4. `RandomAutocontrast()`: p=0.5, stretch each channel's min..max to 0..255 (constant channels
   unchanged).

torchvision's uint8 kernels were written after Pillow's `ImageEnhance` / `ImageOps` (same
degenerate images, same blend, same truncation), so each step here is the Pillow operation of
the same name; a pixel may differ by one level where the two libraries round a float
differently. Randomness comes from a `random.Random` passed in, so a seeded generator gives the
same pixels on every run and in every loader worker; torch's global generator is not touched.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageEnhance, ImageOps

BRIGHTNESS = 0.2
SATURATION = 0.2
POSTERIZE_BITS = 4
SHARPNESS_FACTOR = 1.5
P_POSTERIZE = 0.5  # torchvision's default p for RandomPosterize, RandomAdjustSharpness,
P_SHARPNESS = 0.5  # RandomAutocontrast; the published Compose does not set p.
P_AUTOCONTRAST = 0.5
SUPPORTED_MODES = ("RGB", "L")


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the pipeline's randomness: what `augment_image` does to one image."""

    brightness: float
    saturation: float
    brightness_first: bool
    posterize: bool
    sharpen: bool
    autocontrast: bool


def draw_params(rng: random.Random) -> AugmentParams:
    """Draw in a fixed order (factors, order, then each coin) so a seed fixes the whole result."""
    brightness = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)
    saturation = rng.uniform(1 - SATURATION, 1 + SATURATION)
    brightness_first = rng.random() < 0.5
    return AugmentParams(
        brightness=brightness,
        saturation=saturation,
        brightness_first=brightness_first,
        # torchvision applies a Random* transform when rand < p.
        posterize=rng.random() < P_POSTERIZE,
        sharpen=rng.random() < P_SHARPNESS,
        autocontrast=rng.random() < P_AUTOCONTRAST,
    )


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    """Pixels times `factor`, clipped to 0..255 (a blend with black)."""
    return ImageEnhance.Brightness(image).enhance(factor)


def adjust_saturation(image: Image.Image, factor: float) -> Image.Image:
    """Blend with the image's grayscale: 0 gives gray, 1 the image, > 1 stronger colour."""
    return ImageEnhance.Color(image).enhance(factor)


def posterize(image: Image.Image, bits: int) -> Image.Image:
    """Keep the top `bits` bits of every channel value."""
    return ImageOps.posterize(image, bits)


def adjust_sharpness(image: Image.Image, factor: float) -> Image.Image:
    """Blend with the 3x3-smoothed image: 1 gives the image, > 1 sharpens; borders unchanged."""
    return ImageEnhance.Sharpness(image).enhance(factor)


def autocontrast(image: Image.Image) -> Image.Image:
    """Map each channel's darkest value to 0 and brightest to 255, linearly."""
    return ImageOps.autocontrast(image)


def apply_params(image: Image.Image, params: AugmentParams) -> Image.Image:
    """The pipeline with its randomness fixed: colour jitter, posterize, sharpness, autocontrast."""
    colour = [
        lambda im: adjust_brightness(im, params.brightness),
        lambda im: adjust_saturation(im, params.saturation),
    ]
    for step in colour if params.brightness_first else colour[::-1]:
        image = step(image)
    if params.posterize:
        image = posterize(image, POSTERIZE_BITS)
    if params.sharpen:
        image = adjust_sharpness(image, SHARPNESS_FACTOR)
    if params.autocontrast:
        image = autocontrast(image)
    return image


def augment_image(image: Image.Image, rng: random.Random) -> Image.Image:
    """The published augmentation of one RGB (or L) image; same size and mode, new pixels.

    Deterministic for a given `rng` state; advances `rng` by the same number of draws every call.
    """
    if image.mode not in SUPPORTED_MODES:
        raise ValueError(
            f"augment_image: image mode {image.mode!r} is not supported (need one of {SUPPORTED_MODES}); "
            "convert it first, e.g. with streamvln_model.data.media.images.to_rgb"
        )
    return apply_params(image, draw_params(rng))
