"""Fast SigLIP preprocessing equals the transformers processor; the published augmentation.

The preprocessing is compared with `SiglipImageProcessorPil` itself on real image files; each
augmentation step is compared with torchvision's documented uint8 formula, written out in numpy
here (torchvision is not installed), within the one level where float rounding may differ.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SiglipImageProcessorPil, SiglipVisionConfig

from streamvln_model.data.media import augmentation as aug
from streamvln_model.data.media.images import load_rgb, preprocess_frames, preprocess_images
from streamvln_model.model.vision import build_image_processor

# Values lie in [-1, 1]: one float32 ulp near 1 is 2**-23; one pixel level is 2/255.
FLOAT32_ROUNDING = 2.5e-7


def scene(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like HxWx3 uint8 image: smooth gradients, edges and noise (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    base[height // 3 : height // 2, width // 4 : width // 2] = rng.integers(0, 256, 3)
    noisy = base + rng.normal(0, 12, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def processor_pixels(processor: SiglipImageProcessorPil, images: list[Image.Image]) -> torch.Tensor:
    return processor(images=images, return_tensors="pt")["pixel_values"]


def max_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float32
    return (ours - theirs).abs().max().item()


@pytest.fixture(scope="module")
def siglip_384() -> SiglipImageProcessorPil:
    return build_image_processor(SiglipVisionConfig(image_size=384))


@pytest.fixture
def jpeg_frames(tmp_path: Path) -> list[Path]:
    paths = []
    for k in range(3):
        path = tmp_path / f"{k:03d}.jpg"
        Image.fromarray(scene(640, 480, k)).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def test_jpeg_frames_match_the_processor(siglip_384, jpeg_frames):
    ours = preprocess_frames(siglip_384, jpeg_frames)
    theirs = processor_pixels(siglip_384, [Image.open(p) for p in jpeg_frames])
    assert ours.shape == (3, 3, 384, 384)
    assert max_difference(ours, theirs) <= FLOAT32_ROUNDING


def test_settings_come_from_the_processor(jpeg_frames):
    """Another size, filter, mean and std: the pixels follow the processor object, not constants."""
    processor = SiglipImageProcessorPil(
        size={"height": 224, "width": 256},
        resample=Image.Resampling.BILINEAR,
        rescale_factor=1 / 255,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    images = [Image.open(p) for p in jpeg_frames]
    ours = preprocess_images(processor, images)
    assert ours.shape == (3, 3, 224, 256)
    assert max_difference(ours, processor_pixels(processor, images)) <= 1e-6  # std < 1 scales the ulp


def non_rgb_files(folder: Path) -> dict[str, Path]:
    rgb = scene(320, 240, 7)
    alpha = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))  # transparent .. opaque
    paletted_transparent = Image.fromarray(rgb).quantize(64)
    paletted_transparent.info["transparency"] = 0
    images = {
        "RGBA": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "L": Image.fromarray(rgb[..., 0], "L"),
        "P": Image.fromarray(rgb).quantize(64),
        "P+transparency": paletted_transparent,
    }
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name], transparency=image.info.get("transparency"))
    return paths


@pytest.mark.parametrize("name", ["RGBA", "L", "P", "P+transparency"])
def test_non_rgb_images_are_converted_like_the_processor(siglip_384, tmp_path, name):
    path = non_rgb_files(tmp_path)[name]
    image = Image.open(path)
    assert image.mode == name.split("+")[0]
    ours = preprocess_images(siglip_384, [image])
    assert max_difference(ours, processor_pixels(siglip_384, [Image.open(path)])) <= FLOAT32_ROUNDING
    assert image.mode == name.split("+")[0]  # the caller's image is not converted in place


def test_transparency_is_composited_onto_white(siglip_384, tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(path)
    assert torch.all(preprocess_images(siglip_384, [Image.open(path)]) == 1.0)  # white -> +1


def test_load_rgb_converts_like_the_published_dataset(tmp_path, jpeg_frames):
    """Frames load as `Image.open(f).convert('RGB')` does (alpha dropped, not composited)."""
    path = non_rgb_files(tmp_path)["RGBA"]
    loaded = load_rgb(path)
    assert loaded.mode == "RGB"
    assert np.array_equal(np.asarray(loaded), np.asarray(Image.open(path).convert("RGB")))
    jpeg = load_rgb(jpeg_frames[0])
    assert jpeg.mode == "RGB" and jpeg.size == (640, 480)


def test_refuses_processor_steps_it_does_not_implement(jpeg_frames):
    images = [Image.open(jpeg_frames[0])]
    with pytest.raises(ValueError, match="size"):
        preprocess_images(SiglipImageProcessorPil(size={"shortest_edge": 384}), images)
    with pytest.raises(ValueError, match="do_center_crop"):
        preprocess_images(
            SiglipImageProcessorPil(do_center_crop=True, crop_size={"height": 8, "width": 8}), images
        )


def test_augment_keyword_augments_each_frame_in_order(siglip_384, jpeg_frames):
    plain = preprocess_frames(siglip_384, jpeg_frames)
    first = preprocess_frames(siglip_384, jpeg_frames, augment=random.Random(3))
    again = preprocess_frames(siglip_384, jpeg_frames, augment=random.Random(3))
    assert torch.equal(first, again)
    assert all(not torch.equal(first[k], plain[k]) for k in range(len(jpeg_frames)))
    rng = random.Random(3)
    by_hand = [aug.augment_image(load_rgb(p), rng) for p in jpeg_frames]
    assert torch.equal(first, preprocess_images(siglip_384, by_hand))


# --- augmentation ---------------------------------------------------------------------------


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def close_to(actual: Image.Image, expected: np.ndarray) -> bool:
    """Within one level (Pillow and torchvision round some floats differently)."""
    return int(np.abs(pixels(actual) - expected).max()) <= 1


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(scene(160, 120, 1))


def test_same_seed_same_pixels_different_seeds_different_pixels(photo):
    runs = [pixels(aug.augment_image(photo, random.Random(seed))) for seed in (5, 5)]
    assert np.array_equal(runs[0], runs[1])
    distinct = {pixels(aug.augment_image(photo, random.Random(seed))).tobytes() for seed in range(8)}
    assert len(distinct) == 8
    assert photo.tobytes() not in distinct


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_size_and_mode_unchanged(photo, mode):
    image = photo.convert(mode)
    for seed in range(6):
        out = aug.augment_image(image, random.Random(seed))
        assert (out.size, out.mode) == (image.size, image.mode)


def test_rejects_modes_it_cannot_augment(photo):
    with pytest.raises(ValueError, match=r"'RGBA'.*to_rgb"):
        aug.augment_image(photo.convert("RGBA"), random.Random(0))


def test_draws_follow_the_published_parameters():
    draws = [aug.draw_params(random.Random(seed)) for seed in range(400)]
    for factor in ("brightness", "saturation"):
        values = [getattr(d, factor) for d in draws]
        assert 0.8 <= min(values) < 0.82 and 1.18 < max(values) <= 1.2
    for coin in ("brightness_first", "posterize", "sharpen", "autocontrast"):
        assert 0.4 < np.mean([getattr(d, coin) for d in draws]) < 0.6


def test_brightness_scales_pixels():
    image = Image.fromarray(np.array([[[0, 100, 200], [50, 150, 250]]], dtype=np.uint8))
    for factor in (0.8, 1.0, 1.13, 1.2):
        expected = np.clip(np.floor(np.asarray(image) * factor), 0, 255)
        assert close_to(aug.adjust_brightness(image, factor), expected)
    assert pixels(aug.adjust_brightness(image, 1.2))[0, 1, 2] == 255  # 250 * 1.2 clips


def test_saturation_blends_with_grayscale(photo):
    rgb = np.asarray(photo).astype(np.float64)
    gray = np.floor(rgb @ [0.2989, 0.587, 0.114])[..., None]  # torchvision's rgb_to_grayscale
    for factor in (0.0, 0.8, 1.2):
        expected = np.clip(np.floor(factor * rgb + (1 - factor) * gray), 0, 255)
        assert close_to(aug.adjust_saturation(photo, factor), expected)
    grey_image = photo.convert("L").convert("RGB")
    assert np.array_equal(pixels(aug.adjust_saturation(grey_image, 1.2)), pixels(grey_image))


def test_posterize_keeps_the_top_bits():
    every_value = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    out = pixels(aug.posterize(every_value, 4))
    assert np.array_equal(out, np.arange(256).reshape(16, 16) & 0xF0)
    assert len(np.unique(out)) == 16


def test_sharpness_blends_away_from_the_smoothed_image():
    flat = np.full((7, 7, 3), 50, dtype=np.uint8)
    flat[3, 3] = 200
    image = Image.fromarray(flat)
    # torchvision: degenerate = round(conv3x3(image, [[1,1,1],[1,5,1],[1,1,1]] / 13)), border kept.
    padded = flat.astype(np.float64)
    blurred = padded.copy()
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    for y in range(1, 6):
        for x in range(1, 6):
            blurred[y, x] = np.round(np.einsum("ij,ijc->c", kernel, padded[y - 1 : y + 2, x - 1 : x + 2]))
    expected = np.clip(np.floor(blurred + 1.5 * (padded - blurred)), 0, 255)
    out = aug.adjust_sharpness(image, 1.5)
    assert close_to(out, expected)
    assert pixels(out)[3, 3, 0] > 200 and pixels(out)[2, 3, 0] < 50  # peak up, neighbours down
    assert np.array_equal(pixels(out)[0], pixels(image)[0])  # border row kept
    assert np.array_equal(pixels(aug.adjust_sharpness(image, 1.0)), pixels(image))


def test_autocontrast_stretches_each_channel():
    rng = np.random.default_rng(0)
    low = np.stack(
        [rng.integers(110, 141, (20, 20)), rng.integers(40, 51, (20, 20)), np.full((20, 20), 77)], axis=-1
    ).astype(np.uint8)
    low[0, 0, :2], low[-1, -1, :2] = (100, 30), (150, 60)  # one darkest and one brightest pixel
    out = pixels(aug.autocontrast(Image.fromarray(low)))
    for c in (0, 1):
        lo, hi = low[..., c].min(), low[..., c].max()
        assert (out[..., c].min(), out[..., c].max()) == (0, 255)
        expected = np.floor((low[..., c].astype(np.float64) - lo) * 255 / (hi - lo))
        assert int(np.abs(out[..., c] - expected).max()) <= 1
    assert np.array_equal(out[..., 2], low[..., 2])  # a constant channel is left as it is


def test_params_apply_exactly_the_drawn_steps(photo):
    identity = aug.AugmentParams(1.0, 1.0, True, posterize=False, sharpen=False, autocontrast=False)
    assert np.array_equal(pixels(aug.apply_params(photo, identity)), pixels(photo))
    only_posterize = aug.AugmentParams(1.0, 1.0, False, posterize=True, sharpen=False, autocontrast=False)
    assert np.array_equal(pixels(aug.apply_params(photo, only_posterize)), pixels(photo) & 0xF0)
    rng = random.Random(11)
    params = aug.draw_params(random.Random(11))
    assert np.array_equal(pixels(aug.augment_image(photo, rng)), pixels(aug.apply_params(photo, params)))
