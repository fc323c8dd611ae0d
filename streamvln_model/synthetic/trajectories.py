"""Synthetic navigation episodes in the published StreamVLN on-disk layout.

Real R2R/RxR data cannot be used in tests or smoke runs, so we generate episodes whose layout is
byte-for-byte the published one (`annotations.json` + `images/<video>/rgb/NNN.jpg`) and whose task
is learnable from pixels alone: the frame at step t paints the next K target actions as coloured
vertical bands. Actions are i.i.d. uniform over forward/left/right, so a model that ignores the
images is stuck near 1/3 accuracy, while one that reads its frames can reach ~100%.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE
from streamvln_model.files import write_json_atomically
from streamvln_model.model.constants import (
    ACTION_FORWARD,
    ACTION_LEFT,
    ACTION_RIGHT,
    ACTION_STOP,
    PLACEHOLDER_ACTION,
)
from streamvln_model.synthetic.common import (
    RGB,
    add_noise,
    check_positive,
    check_seed,
    check_size,
    item_rng,
    save_jpeg,
)

ACTION_COLOURS: dict[int, RGB] = {
    ACTION_STOP: (255, 255, 255),
    ACTION_FORWARD: (0, 200, 0),
    ACTION_LEFT: (220, 0, 0),
    ACTION_RIGHT: (0, 0, 220),
}
PAST_END_COLOUR: RGB = (128, 128, 128)
ANNOTATIONS_FILE = "annotations.json"
VIDEO_PREFIX = "synth_"
REAL_ACTIONS = (ACTION_FORWARD, ACTION_LEFT, ACTION_RIGHT)

# Instruction vocabulary: the words carry no signal about the actions, on purpose.
_VERBS = ("Walk", "Go", "Head", "Move", "Continue")
_DIRECTIONS = ("forward", "straight ahead", "down the hallway", "through the doorway", "along the wall")
_SIDES = ("left", "right")
_OBJECTS = (
    "table",
    "sofa",
    "staircase",
    "kitchen counter",
    "bed",
    "potted plant",
    "door",
    "window",
    "fireplace",
    "bookshelf",
    "painting",
    "rug",
)
_ROOMS = ("bedroom", "kitchen", "living room", "bathroom", "hallway", "office", "dining room")
_TEMPLATES = (
    "{verb} {direction} past the {obj} and stop near the {obj2}.",
    "Turn {side} at the {obj}, then {verb_lower} {direction} to the {obj2}.",
    "Exit the {room} and wait by the {obj}.",
    "{verb} through the {room} toward the {obj} and stop.",
    "Go around the {obj}, enter the {room} and stop next to the {obj2}.",
    "Take a {side} after the {obj} and stop in front of the {obj2}.",
)


@dataclass(frozen=True)
class TrajectorySummary:
    """What was written, so callers can log it without re-reading the folder."""

    out: Path
    episodes: int
    frames: int
    # Counts of the real actions (entries 1..L-1 of every `actions` list), keyed by action id 0-3.
    action_histogram: dict[int, int] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)

    @property
    def annotations_path(self) -> Path:
        return self.out / ANNOTATIONS_FILE


def video_name(episode_id: int, scene: str | None = None) -> str:
    """Stable folder name of an episode's frames: `synth_000012`, or `<scene>_synth_000012`.

    The published folders are named `<scan id>_<dataset>_<episode>` (e.g. `17DRP5sb8fy_r2r_000012`),
    and evaluation takes the part before the first `_` as the scene; with `scene` the synthetic
    names follow that layout, so held-out splits by scene can be built from synthetic data.
    """
    name = f"{VIDEO_PREFIX}{episode_id:06d}"
    return f"{scene}_{name}" if scene is not None else name


def _check_scene(scene: str | None) -> None:
    """A scene name is one folder-name part: no `_` (it ends the scene), no path separator."""
    if scene is not None and (not scene or any(c in scene for c in "_/\\") or scene in (".", "..")):
        raise ValueError(
            f"scene {scene!r}: must be a non-empty name without '_', '/' or '\\' (the scene is the part "
            "of the folder name before the first '_'), e.g. 'sceneA'"
        )


def targets_from_actions(actions: Sequence[int]) -> list[int]:
    """Training targets per step: drop the -1 placeholder, append the final STOP (as the dataset does)."""
    return [*actions[1:], ACTION_STOP]


def upcoming_targets(targets: Sequence[int], step: int, num_future_steps: int) -> list[int | None]:
    """The K targets from `step` on; None marks steps past the end of the episode."""
    return [
        targets[step + offset] if step + offset < len(targets) else None for offset in range(num_future_steps)
    ]


def _band_edges(width: int, bands: int) -> list[int]:
    """Column boundaries of `bands` near-equal vertical bands (shared by render and decode)."""
    return [round(index * width / bands) for index in range(bands + 1)]


def _colour_of(action: int | None) -> RGB:
    return PAST_END_COLOUR if action is None else ACTION_COLOURS[action]


def render_frame(upcoming: list[int | None], size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Paint one band per upcoming action (left to right) plus seeded noise; `size` is (width, height)."""
    width, height = size
    if not upcoming or width < len(upcoming) or height < 1:
        raise ValueError(f"size {size} cannot hold {len(upcoming)} bands")
    pixels = np.empty((height, width, 3), dtype=np.int16)
    edges = _band_edges(width, len(upcoming))
    for index, action in enumerate(upcoming):
        pixels[:, edges[index] : edges[index + 1]] = _colour_of(action)
    return Image.fromarray(add_noise(pixels, rng))


def _nearest_action(mean: np.ndarray) -> int | None:
    """Map a band's mean colour to the closest palette entry (None for the past-the-end grey)."""
    palette: list[tuple[int | None, RGB]] = [*ACTION_COLOURS.items(), (None, PAST_END_COLOUR)]
    distances = [float(np.sum((mean - np.asarray(colour, dtype=np.float64)) ** 2)) for _, colour in palette]
    return palette[int(np.argmin(distances))][0]


def decode_frame(image: Image.Image, num_future_steps: int) -> list[int | None]:
    """Read the bands back; proves the labels are recoverable from pixels despite noise and JPEG."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    edges = _band_edges(pixels.shape[1], num_future_steps)
    decoded = []
    for index in range(num_future_steps):
        left, right = edges[index], edges[index + 1]
        # Skip a margin at the band edges, where JPEG ringing mixes neighbouring colours.
        margin = min(2, max((right - left - 1) // 2, 0))
        band = pixels[:, left + margin : right - margin]
        decoded.append(_nearest_action(band.reshape(-1, 3).mean(axis=0)))
    return decoded


def instruction(rng: np.random.Generator, min_chars: int = 0) -> str:
    """One English instruction from random templates and words, sentences added until it is at
    least `min_chars` long (R2R/RxR instructions run ~150-300 characters; 0: one sentence)."""
    text = _sentence(rng)
    while len(text) < min_chars:
        text += " " + _sentence(rng)
    return text


def _sentence(rng: np.random.Generator) -> str:
    """One short English sentence from a random template and random words."""
    verb = str(rng.choice(_VERBS))
    first, second = rng.choice(len(_OBJECTS), size=2, replace=False)
    return str(rng.choice(_TEMPLATES)).format(
        verb=verb,
        verb_lower=verb.lower(),
        direction=str(rng.choice(_DIRECTIONS)),
        side=str(rng.choice(_SIDES)),
        obj=_OBJECTS[first],
        obj2=_OBJECTS[second],
        room=str(rng.choice(_ROOMS)),
    )


def _episode(
    episode_id: int, rng: np.random.Generator, min_steps: int, max_steps: int, scene: str | None = None
) -> dict:
    """One annotation record; `len(actions)` is uniform in [min_steps, max_steps]."""
    length = int(rng.integers(min_steps, max_steps + 1))
    real = rng.choice(REAL_ACTIONS, size=length - 1)
    instructions = [instruction(rng) for _ in range(int(rng.integers(1, 4)))]
    return annotation(episode_id, f"images/{video_name(episode_id, scene)}", instructions, real)


def annotation(episode_id: int, video: str, instructions: Sequence[str], moves: Sequence[int]) -> dict:
    """One `annotations.json` record as published: `actions` is the -1 placeholder, then `moves`."""
    return {
        "id": episode_id,
        "video": video,
        "instructions": list(instructions),
        "actions": [PLACEHOLDER_ACTION, *(int(action) for action in moves)],
    }


def frame_name(index: int, count: int) -> str:
    """Zero-padded so that name order is step order (3 digits as published, more if ever needed)."""
    return f"{index:0{max(3, len(str(count - 1)))}d}.jpg"


def write_linked_frames(rgb_dir: Path, frame: Image.Image, count: int) -> None:
    """`count` frames in `rgb_dir`, all one JPEG: the first saved, the rest hard links to it (copies
    where the filesystem has none). For checks that list and stat frames but never decode them
    (bench/data_scale.py writes ScaleVLN-size sources this way)."""
    rgb_dir.mkdir(parents=True, exist_ok=True)
    first = rgb_dir / frame_name(0, count)
    save_jpeg(first, frame)
    for step in range(1, count):
        target = rgb_dir / frame_name(step, count)
        try:
            os.link(first, target)
        except OSError:
            shutil.copyfile(first, target)


def _write_frames(
    out: Path, episode: dict, rng: np.random.Generator, image_size: tuple[int, int], num_future_steps: int
) -> int:
    """Write exactly one JPEG per entry of `actions`; frame t shows targets t..t+K-1."""
    rgb_dir = out / episode["video"] / "rgb"
    rgb_dir.mkdir(parents=True)
    targets = targets_from_actions(episode["actions"])
    for step in range(len(targets)):
        frame = render_frame(upcoming_targets(targets, step, num_future_steps), image_size, rng)
        save_jpeg(rgb_dir / frame_name(step, len(targets)), frame)
    return len(targets)


def _validate(
    episodes: int, min_steps: int, max_steps: int, image_size: tuple[int, int], seed: int, k: int
) -> tuple[int, int]:
    """Reject bad arguments up front, naming the argument, before anything touches the disk;
    returns the image size as ints."""
    check_seed(seed)
    check_positive(episodes=episodes)
    if min_steps < 4:
        raise ValueError(f"min_steps must be >= 4 (the dataset skips shorter episodes), got {min_steps}")
    if max_steps < min_steps:
        raise ValueError(f"max_steps ({max_steps}) must be >= min_steps ({min_steps})")
    check_positive(num_future_steps=k)
    size = check_size(image_size, "image_size")
    if size[0] < k:
        raise ValueError(f"image_size width {size[0]} is narrower than num_future_steps ({k}) bands")
    return size


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a dataset unless asked; clear our own stale frame folders either way."""
    annotations = out / ANNOTATIONS_FILE
    if annotations.exists():
        if not overwrite:
            raise ValueError(f"{annotations} already exists (pass overwrite=True to replace it)")
        annotations.unlink()  # first, so a crash below never leaves annotations pointing at new frames
    images = out / "images"
    if images.is_dir():
        for pattern in (f"{VIDEO_PREFIX}*", f"*_{VIDEO_PREFIX}*"):  # without and with a scene
            for stale in images.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
    images.mkdir(parents=True, exist_ok=True)


def write_trajectories(
    out: Path,
    episodes: int,
    min_steps: int = 20,
    max_steps: int = 90,
    image_size: tuple[int, int] = (160, 120),
    seed: int = 0,
    num_future_steps: int = STREAMVLN_SHAPE.num_future_steps,
    overwrite: bool = False,
    scene: str | None = None,
) -> TrajectorySummary:
    """Write `episodes` synthetic episodes under `out`; deterministic for a given seed.

    `image_size` is (width, height). `annotations.json` is written last and atomically, so its
    presence means every frame it refers to is on disk. `scene` (optional) prefixes every folder
    name as the published scan id does (`images/<scene>_synth_000012`); without it the names are
    `images/synth_000012`. The episodes themselves do not depend on the scene.
    """
    size = _validate(episodes, min_steps, max_steps, image_size, seed, num_future_steps)
    _check_scene(scene)
    out = Path(out)
    _prepare_output(out, overwrite)
    records, frames = [], 0
    histogram = dict.fromkeys(ACTION_COLOURS, 0)
    for episode_id in range(episodes):
        rng = item_rng(seed, episode_id)
        record = _episode(episode_id, rng, min_steps, max_steps, scene)
        frames += _write_frames(out, record, rng, size, num_future_steps)
        for action in record["actions"][1:]:
            histogram[action] += 1
        records.append(record)
    write_json_atomically(out / ANNOTATIONS_FILE, records)
    return TrajectorySummary(
        out=out,
        episodes=episodes,
        frames=frames,
        action_histogram=histogram,
        lengths=[len(record["actions"]) for record in records],
    )
