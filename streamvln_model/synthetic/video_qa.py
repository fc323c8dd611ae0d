"""Synthetic video QA in the LLaVA-Video-178K layout (co-training task 1).

LLaVA-Video-178K (lmms-lab/LLaVA-Video-178K, used for StreamVLN co-training, arXiv 2507.05240)
is a JSON list of `{"id", "conversations": [{"from": "human"|"gpt", "value"}], "data_source",
"video"}` whose first human turn starts with `<image>\\n`. Each subset is a folder named by its
`data_source` holding the JSON and the media, and `video` is relative to that folder (the loader
reads `<qa_video_folder>/<data_source>/<video>`): an mp4, or a folder of frames (LLaVA-NeXT's
`llava/train/train.py` reads a folder as frames when its path contains `shareVideoGPTV`, sorted
by name). We write both kinds. Each video is a few segments of one solid colour, and every answer
is about those colours, so it is readable from the pixels and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from streamvln_model.files import write_json_atomically
from streamvln_model.synthetic.common import (
    COLOUR_NAMES,
    check_arguments,
    dataset_folder,
    item_rng,
    number_word,
    save_jpeg,
    solid_frame,
)

QA_JSON = "synthetic_oe_qa_processed.json"  # named like LLaVA-Video-178K's `*_oe_qa_processed.json`
DATA_SOURCE = "synthetic_v0_1"
VIDEO_DIR = "videos"  # both relative to the data_source folder
FRAME_DIR = "shareVideoGPTV/frames"
VIDEO_PREFIX = "synth_video_"
PREFERRED_CODECS = ("libx264", "mpeg4")  # H.264 as the real mp4s; MPEG-4 part 2 where x264 is missing
X264_OPTIONS = {"crf": "18", "preset": "veryfast"}
MPEG4_BIT_RATE = 4_000_000
MAX_SEGMENTS = 4


@dataclass(frozen=True)
class VideoQASummary:
    """What was written, so callers can log it without re-reading the folder."""

    out: Path
    videos: int
    mp4_files: int
    frame_folders: int
    frames_per_video: int
    turns: int
    codec: str

    @property
    def json_path(self) -> Path:
        return self.out / DATA_SOURCE / QA_JSON


def video_codec() -> str:
    """The first encoder of PREFERRED_CODECS that this PyAV build has."""
    for name in PREFERRED_CODECS:
        if name in av.codecs_available:
            return name
    raise RuntimeError(f"PyAV has none of the encoders {PREFERRED_CODECS}; install a PyAV wheel with FFmpeg")


def colour_segments(frames: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """(colour, frame count) runs covering `frames`; neighbours differ so every change is visible."""
    count = int(rng.integers(1, min(MAX_SEGMENTS, frames) + 1))
    cuts = sorted(int(cut) for cut in rng.choice(np.arange(1, frames), size=count - 1, replace=False))
    lengths = np.diff([0, *cuts, frames])
    colours: list[str] = []
    for _ in range(count):
        options = [name for name in COLOUR_NAMES if not colours or name != colours[-1]]
        colours.append(str(rng.choice(options)))
    return list(zip(colours, (int(length) for length in lengths), strict=True))


def frame_colours(segments: list[tuple[str, int]]) -> list[str]:
    """The colour of each frame, in order."""
    return [colour for colour, length in segments for _ in range(length)]


def _qa_pairs(segments: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """Every question we can ask about a video, with its answer (derived from the colours only)."""
    colours = [colour for colour, _ in segments]
    return [
        ("What colour fills the screen at the start of the video?", f"{colours[0].capitalize()}."),
        ("What colour fills the screen at the end of the video?", f"{colours[-1].capitalize()}."),
        (
            "How many times does the colour of the screen change?",
            f"{number_word(len(colours) - 1).capitalize()}.",
        ),
        ("List the colours of the screen in the order they appear.", ", ".join(colours).capitalize() + "."),
    ]


def conversation(segments: list[tuple[str, int]], rng: np.random.Generator) -> list[dict[str, str]]:
    """2-4 human/gpt turns in random order; the first human turn starts with `<image>\\n`."""
    pairs = _qa_pairs(segments)
    chosen = rng.permutation(len(pairs))[: int(rng.integers(2, len(pairs) + 1))]
    turns: list[dict[str, str]] = []
    for position, index in enumerate(chosen):
        question, answer = pairs[int(index)]
        turns.append({"from": "human", "value": f"<image>\n{question}" if position == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def render_frames(segments: list[tuple[str, int]], size: tuple[int, int], rng: np.random.Generator):
    """One noisy solid-colour RGB uint8 frame per entry of `frame_colours(segments)`."""
    return [solid_frame(colour, size, rng) for colour in frame_colours(segments)]


def encode_mp4(path: Path, frames: list[np.ndarray], fps: int, codec: str) -> None:
    """Write `frames` as one mp4 video stream; encoded aside and renamed so no torn mp4 is seen."""
    height, width = frames[0].shape[:2]
    partial = path.with_name(path.name + ".partial")
    with av.open(str(partial), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: the same bytes on every machine
        if codec == "libx264":
            stream.options = dict(X264_OPTIONS)
        else:
            stream.bit_rate = MPEG4_BIT_RATE
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    os.replace(partial, path)


def write_frame_folder(folder: Path, frames: list[np.ndarray]) -> None:
    """Frames as `0000.jpg, 0001.jpg, ...`: zero-padded because readers sort frame files by name."""
    folder.mkdir(parents=True)
    width = max(4, len(str(len(frames) - 1)))
    for index, pixels in enumerate(frames):
        save_jpeg(folder / f"{index:0{width}d}.jpg", pixels)


def _check(
    videos: int, frames: int, fps: int, frame_folders: int, seed: int, size: tuple[int, int]
) -> tuple[int, int]:
    size = check_arguments(seed, size, even=True, videos=videos, fps=fps)
    if frames < 2:
        raise ValueError(f"frames must be >= 2 (a video needs a start and an end), got {frames}")
    if not 0 <= frame_folders <= videos:
        raise ValueError(f"frame_folders must be between 0 and videos ({videos}), got {frame_folders}")
    return size


def write_video_qa(
    out: Path,
    videos: int = 6,
    seed: int = 0,
    frames: int = 16,
    size: tuple[int, int] = (64, 48),
    fps: int = 4,
    frame_folders: int = 2,
    overwrite: bool = False,
) -> VideoQASummary:
    """Write `videos` videos (the last `frame_folders` as frame folders, the rest mp4) and one QA
    record per video under `out`; deterministic for a given seed (every file byte for byte
    with the same PyAV build).

    `size` is (width, height); `--qa_video_folder` is `out`.
    """
    size = _check(videos, frames, fps, frame_folders, seed, size)
    codec = video_codec()
    records, turns = [], 0
    with dataset_folder(Path(out), overwrite) as partial:
        subset = partial / DATA_SOURCE
        (subset / VIDEO_DIR).mkdir(parents=True)
        for index in range(videos):
            rng = item_rng(seed, index)
            segments = colour_segments(frames, rng)
            pixels = render_frames(segments, size, rng)
            name = f"{VIDEO_PREFIX}{index:06d}"
            if index >= videos - frame_folders:
                video = f"{FRAME_DIR}/{name}"
                write_frame_folder(subset / video, pixels)
            else:
                video = f"{VIDEO_DIR}/{name}.mp4"
                encode_mp4(subset / video, pixels, fps, codec)
            dialogue = conversation(segments, rng)
            turns += len(dialogue) // 2
            records.append(
                {"id": name, "conversations": dialogue, "data_source": DATA_SOURCE, "video": video}
            )
        write_json_atomically(subset / QA_JSON, records)
    return VideoQASummary(
        out=Path(out),
        videos=videos,
        mp4_files=videos - frame_folders,
        frame_folders=frame_folders,
        frames_per_video=frames,
        turns=turns,
        codec=codec,
    )
