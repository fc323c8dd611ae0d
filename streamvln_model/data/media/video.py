"""Videos for the co-training QA data: probe, frame sampling as published, decoding with PyAV.

LLaVA-Video-178K (the QA data of StreamVLN stage two, arXiv 2507.05240) stores most videos as
files and some (`shareVideoGPTV`) as folders of frame images; both are "videos" here. The frame
choice follows LLaVA-NeXT `llava/utils.py` `process_video_with_decord` and the frame-folder branch
of `LazySupervisedDataset._get_item` (GitHub LLaVA-VL/LLaVA-NeXT `llava/train/train.py`, as used
by InternRobotics/StreamVLN `streamvln/streamvln_train.py`):

- a video file: one frame every `round(fps / video_fps)` frames; when `frames_upbound > 0` and
  there are more than `frames_upbound` of those, or `force_sample` is set, exactly
  `frames_upbound` frames evenly spaced over the whole video (`linspace(0, frames - 1, n)`,
  truncated to integers);
- a frame folder: `frames_upbound` frames when `force_sample`, else 10, evenly spaced, with the
  folder taken as a 2 fps video (its duration is `frames / 2`).

Two defects of the published code are not kept: the timestamps of the one-per-step branch are
`index / step`, seconds only when `video_fps` is 1 (here always `index / fps`), and a step of 0
(a video slower than `video_fps / 2`) crashes `range` (here at least 1). Frame folders are
ordered by frame number, not as text (`10.jpg` after `9.jpg`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from streamvln_model.data import locations as storage
from streamvln_model.data.media.frames import is_frame, order_frames

FOLDER_FPS = 2.0  # the published frame-folder branch takes every folder as a 2 fps video
FOLDER_DEFAULT_FRAMES = 10  # ... and samples 10 frames unless force_sample
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".wmv", ".mpg", ".mpeg", ".gif")
_PREFIXED_FRAME = re.compile(r"^(.*?)(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


class VideoError(ValueError):
    """A video that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class VideoInfo:
    """What sampling needs: decodable frames, average rate, and `frames / fps` seconds.

    The duration is `frames / fps`, as the published time instruction computes it, so the text
    and the timestamps agree with each other even when container metadata disagrees.
    """

    frames: int
    fps: float
    duration: float


def is_video_file(relative: str) -> bool:
    """A path with a video suffix is a file to decode; anything else is a frame folder."""
    return relative.lower().endswith(VIDEO_SUFFIXES)


def order_frame_folder(names: list[str]) -> tuple[list[str], str | None]:
    """The image names of a frame folder in frame order, or why they have none.

    Plain step numbers (`0.jpg`, `10.jpg`) are ordered numerically; names that share one prefix
    before their number (`c01_0001.jpg`, ...) are ordered by that number. Anything else is
    refused rather than sorted as text. A folder holding JPEGs uses only those: ScanNet
    `posed_images` keep depth `.png` files beside the colour `.jpg` frames.
    """
    frames = [name for name in names if is_frame(name)]
    jpegs = [name for name in frames if name.lower().endswith((".jpg", ".jpeg"))]
    frames = jpegs or frames
    if not frames:
        return [], "no frame images (.jpg/.jpeg/.png). Fix: point 'video' at a video file or a frame folder"
    ordered, reason = order_frames(frames)
    if reason is None:
        return ordered, None
    numbered: dict[int, str] = {}
    prefixes = set()
    for name in frames:
        match = _PREFIXED_FRAME.match(name)
        if match is None:
            return [], f"frame file {name!r} carries no frame number. Fix: name frames by number"
        prefixes.add(match.group(1))
        number = int(match.group(2))
        if number in numbered:
            return [], f"frames {numbered[number]!r} and {name!r} both claim frame {number}. Fix: keep one"
        numbered[number] = name
    if len(prefixes) > 1:
        return [], (
            f"frame names mix the prefixes {sorted(prefixes)[:3]}, so they have no single order. "
            "Fix: one prefix per folder"
        )
    return [numbered[k] for k in sorted(numbered)], None


def probe_video(path: str | Path) -> VideoInfo:
    """Decode the whole stream: a truncated or corrupt file fails here, not in a training step.

    A folder is probed as a frame-folder video (its ordered images at 2 fps).
    """
    location = str(path)
    if storage.isdir(location):
        names, reason = order_frame_folder(storage.list_names(location))
        if reason:
            raise VideoError(f"{location}: {reason}")
        return VideoInfo(frames=len(names), fps=FOLDER_FPS, duration=len(names) / FOLDER_FPS)
    local = storage.local_path(location)
    try:
        with av.open(str(local)) as container:
            if not container.streams.video:
                raise VideoError(
                    f"{location}: no video stream (truncated or not a video). Fix: re-export the file"
                )
            stream = container.streams.video[0]
            declared = stream.frames
            decoded = sum(1 for _ in container.decode(stream))
            rate = stream.average_rate or stream.guessed_rate
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, IndexError, ValueError) as error:
        raise VideoError(
            f"{location}: cannot be decoded ({error}). Fix: re-export or replace the file"
        ) from error
    if decoded == 0:
        raise VideoError(f"{location}: no decodable frames. Fix: re-export or replace the file")
    if declared and decoded < declared:
        raise VideoError(
            f"{location}: truncated, {decoded} of {declared} declared frames decode. Fix: re-copy the file"
        )
    if not rate or float(rate) <= 0:
        raise VideoError(
            f"{location}: no frame rate in the stream. Fix: re-export with a constant frame rate"
        )
    fps = float(rate)
    return VideoInfo(frames=decoded, fps=fps, duration=decoded / fps)


def stream_info(path: str | Path) -> VideoInfo:
    """Frame count and rate from the container, for training (the data check already decoded it).

    Counting by decoding is the fallback for containers that do not declare a frame count.
    """
    location = str(path)
    try:
        with av.open(str(storage.local_path(location))) as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            rate = float(stream.average_rate or stream.guessed_rate or 0)
    except (av.error.FFmpegError, OSError, IndexError) as error:
        raise VideoError(
            f"{location}: cannot be opened ({error}). Fix: re-export or replace the file"
        ) from error
    if frames <= 0 or rate <= 0:
        raise VideoError(f"{location}: no frames or no frame rate. Fix: re-export the file")
    return VideoInfo(frames=frames, fps=rate, duration=frames / rate)


def read_frames(path: str | Path, indices: list[int]) -> list[Image.Image]:
    """RGB frames at `indices` (in that order, repeats allowed), decoded in one pass."""
    location = str(path)
    if storage.isdir(location):
        names, reason = order_frame_folder(storage.list_names(location))
        if reason:
            raise VideoError(f"{location}: {reason}")
        return [_load_folder_frame(location, names, i) for i in indices]
    wanted = set(indices)
    found: dict[int, Image.Image] = {}
    try:
        with av.open(str(storage.local_path(location))) as container:
            for position, frame in enumerate(container.decode(video=0)):
                if position in wanted:
                    found[position] = frame.to_image().convert("RGB")
                    if len(found) == len(wanted):
                        break
    except (av.error.FFmpegError, OSError, IndexError) as error:
        raise VideoError(
            f"{location}: cannot be decoded ({error}). Fix: re-export or replace the file"
        ) from error
    missing = sorted(wanted - found.keys())
    if missing:
        raise VideoError(
            f"{location}: frames {missing[:5]} are past the decodable end. Fix: re-copy the file"
        )
    return [found[i] for i in indices]


def _load_folder_frame(folder: str, names: list[str], index: int) -> Image.Image:
    if not 0 <= index < len(names):
        raise VideoError(f"{folder}: frame {index} requested, the folder has {len(names)}")
    with Image.open(storage.local_path(storage.join(folder, names[index]))) as image:
        return image.convert("RGB")


def video_frame_indices(
    info: VideoInfo, video_fps: float, frames_upbound: int, force_sample: bool
) -> tuple[list[int], list[float]]:
    """Frame indices of a video file and their timestamps in seconds (see the module docstring)."""
    step = max(1, round(info.fps / video_fps))
    indices = list(range(0, info.frames, step))
    if frames_upbound > 0 and (len(indices) > frames_upbound or force_sample):
        indices = evenly_spaced(info.frames, frames_upbound)
    return indices, [i / info.fps for i in indices]


def folder_frame_indices(
    frames: int, frames_upbound: int, force_sample: bool
) -> tuple[list[int], list[float]]:
    """Frame indices of a frame folder and their timestamps (the folder taken as 2 fps)."""
    count = frames_upbound if force_sample else FOLDER_DEFAULT_FRAMES
    indices = evenly_spaced(frames, count)
    return indices, [i / FOLDER_FPS for i in indices]


def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` integer positions from 0 to `total - 1`, as `np.linspace(..., dtype=int)` gives them."""
    return np.linspace(0, total - 1, count, dtype=int).tolist()


def time_instruction(duration: float, times: list[float]) -> str:
    """The published `add_time_instruction` sentence (no space before "Please", as published)."""
    stamps = ",".join(f"{t:.2f}s" for t in times)
    return (
        f"The video lasts for {duration:.2f} seconds, and {len(times)} frames are uniformly sampled from it. "
        f"These frames are located at {stamps}.Please answer the following questions related to this video."
    )
