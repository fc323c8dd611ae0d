"""What the co-training generators share: a colour palette readable back from pixels, and
the checks of their arguments, one random stream per item, and building a dataset folder aside so
that readers never see a half-written one.

Every co-training sample's answer names colours that fill its pixels (QA videos, ScanQA scenes,
MMC4 images), so a model that looks at its frames can learn the answers and one that does not
cannot; `nearest_colour` proves the colours survive noise, JPEG and H.264.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

RGB = tuple[int, int, int]

# Far apart in RGB and in YUV 4:2:0, so lossy codecs never move one colour to another's name.
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 50, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 180),
    "orange": (245, 135, 20),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
NOISE_AMPLITUDE = 12
JPEG_QUALITY = 90
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def check_size(size: tuple[int, int], argument: str = "size", even: bool = False) -> tuple[int, int]:
    """(width, height) as ints; refuse non-positive sides (odd ones too where video needs 4:2:0)."""
    if len(size) != 2 or any(int(side) < 1 for side in size):
        raise ValueError(f"{argument} must be two positive ints (width, height), got {tuple(size)}")
    width, height = int(size[0]), int(size[1])
    if even and (width % 2 or height % 2 or width < 16 or height < 16):
        raise ValueError(
            f"{argument} {width}x{height}: video frames need even sides of at least 16 px (YUV 4:2:0); "
            "fix: pass e.g. 64 48"
        )
    return width, height


def check_positive(**values: int) -> None:
    """Refuse counts below 1, naming the argument."""
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_seed(seed: int) -> None:
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def check_arguments(
    seed: int, size: tuple[int, int], argument: str = "size", even: bool = False, **counts: int
) -> tuple[int, int]:
    """What every generator takes, checked in one call: the seed, its counts (>= 1) and its frame
    size; returns (width, height) as ints."""
    check_seed(seed)
    check_positive(**counts)
    return check_size(size, argument, even)


def item_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of item `index` (episode, video, scene, document): item i never depends
    on how many items follow it, so a larger dataset extends a smaller one of the same seed."""
    return np.random.default_rng([seed, index])


def canvas(colour: str, size: tuple[int, int]) -> np.ndarray:
    """An `[H, W, 3]` int16 canvas of one palette colour, to draw on; `add_noise` finishes it."""
    width, height = size
    pixels = np.empty((height, width, 3), dtype=np.int16)
    pixels[:] = COLOURS[colour]
    return pixels


def add_noise(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seeded uniform noise, clipped to uint8: frames are never flat, as real ones never are."""
    noise = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=pixels.shape, dtype=np.int16)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def solid_frame(colour: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A noisy `[H, W, 3]` uint8 frame of one palette colour."""
    return add_noise(canvas(colour, size), rng)


def save_jpeg(path: Path, pixels: np.ndarray | Image.Image) -> None:
    """Every synthetic frame and image is a JPEG of one quality, as the published frames are JPEGs."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(path, format="JPEG", quality=JPEG_QUALITY)


def nearest_colour(pixels: np.ndarray) -> str:
    """The palette name closest to the mean colour of `pixels` (`[..., 3]`, any dtype)."""
    mean = np.asarray(pixels, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    distances = [float(np.sum((mean - np.asarray(rgb, dtype=np.float64)) ** 2)) for rgb in COLOURS.values()]
    return COLOUR_NAMES[int(np.argmin(distances))]


def number_word(count: int) -> str:
    """`two` for 2: short answers in words, as ScanQA/SQA3D answers are."""
    return NUMBER_WORDS[count] if 0 <= count < len(NUMBER_WORDS) else str(count)


def _partial_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


@contextmanager
def dataset_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty `<out>.partial` folder to write into; on success it becomes `out` in one rename.

    `out` is refused when it already holds anything (unless `overwrite`), so real data is never
    mixed with or replaced by synthetic data by accident; a failed write leaves `out` untouched.
    """
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} exists and is not empty. Fix: choose another folder or pass --overwrite"
        )
    partial = _partial_of(out)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    partial.rename(out)
