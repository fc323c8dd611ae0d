"""ScanQA / SQA3D (task 2): questions about a ScanNet scene, the `SCANQA_datasets` group.

On disk (InternRobotics/StreamVLN `streamvln/streamvln_train.py`, the `scannet` branch of
`LazySupervisedDataset._get_item`): a LLaVA-format JSON list whose `video` (joined under
`<scanqa_video_folder>/<data_source>/`) is a ScanNet `posed_images/<scene>` folder holding
`<n>.jpg` colour frames (plus depth `.png` and pose `.txt` files, ignored); the human turn holds
one `<video>` placeholder.

The sample: the scene's `.jpg` frames in frame order, every 10th of them, then `n` of those
(`n = --frames_upbound` with `--force_sample`, else 10): with more than `n`, every
`len // n`-th from the first; with fewer, the list repeated until `n`; `<video>` becomes
`<image>` * n. No time instruction. The published code orders frames as text (`10.jpg` before
`9.jpg`); here they are ordered by number.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

import datasets
from PIL import Image

from streamvln_model.data import locations as storage
from streamvln_model.data.datasets.combined import CoTrainingDataset
from streamvln_model.data.formats.scan import (
    FOLDER,
    ROLES,
    Scan,
    conversation_problems,
    entry_label,
    join_conversation,
    split_conversation,
)
from streamvln_model.data.formats.text import VIDEO_PLACEHOLDER
from streamvln_model.data.media.frames import order_frames
from streamvln_model.data.media.images import load_rgb
from streamvln_model.data.validation.paths import escape_problem
from streamvln_model.data.validation.records import SCANQA, Problem
from streamvln_model.model.constants import DEFAULT_IMAGE_TOKEN

TASK = SCANQA
SCENE_STRIDE = 10  # the published code keeps every 10th posed image
DEFAULT_FRAMES = 10  # frames sampled without --force_sample

FEATURES = datasets.Features(
    {
        "root": datasets.Value("int32"),
        "sample_id": datasets.Value("string"),
        "id": datasets.Value("string"),
        "scene": datasets.Value("string"),  # relative to the root: <data_source>/<video>
        "frames": datasets.List(datasets.Value("string")),  # every 10th .jpg, in frame order
        "roles": datasets.List(datasets.Value("string")),
        "texts": datasets.List(datasets.Value("string")),
    }
)


def scene_frames(names: list[str]) -> tuple[list[str], str | None]:
    """Every 10th colour frame of a posed_images folder listing, in frame order."""
    colour = [name for name in names if name.lower().endswith(".jpg")]
    if not colour:
        return [], "holds no .jpg frames. Fix: point 'video' at a ScanNet posed_images/<scene> folder"
    ordered, reason = order_frames(colour)
    return ordered[::SCENE_STRIDE], reason


def scan(entries: list, source_file: str, root_index: int, root_location: str) -> Scan:
    """Rows, media and problems of one ScanQA/SQA3D list (each scene folder is listed once)."""
    result = Scan()
    listings: dict[str, tuple[list[str], str | None]] = {}
    for number, entry in enumerate(entries):
        sample_id = f"{Path(source_file).name}#{number}"
        found, row = _scan_entry(entry, root_location, listings)
        if found:
            label = entry_label(number, entry)
            result.problems += [Problem(source_file, f"{label} field {f!r}", r, sample_id) for f, r in found]
            continue
        row.update(root=root_index, sample_id=sample_id, id=str(entry.get("id", "")))
        result.add_row(row, [(row["scene"], FOLDER)], sum(len(t) for t in row["texts"]))
    return result


def _scan_entry(entry, root: str, listings: dict) -> tuple[list[tuple[str, str]], dict]:
    if not isinstance(entry, dict):
        return [("entry", "is not an object. Fix: {video, conversations}")], {}
    video, source = entry.get("video"), entry.get("data_source", "")
    if not isinstance(video, str) or not video:
        return [("video", "missing. Fix: the posed_images/<scene> folder, relative to the ScanQA folder")], {}
    if not isinstance(source, str):
        return [("data_source", "is not a string. Fix: the sub-folder name, or drop the field")], {}
    relative = posixpath.join(source, video) if source else video
    found = [("video", reason) for reason in [escape_problem(root, relative)] if reason]
    conversation = entry.get("conversations")
    found += conversation_problems(conversation, _video_in_human_turns)
    if not found:
        count = sum(turn["value"].count(VIDEO_PLACEHOLDER) for turn in conversation)
        if count != 1:
            found.append(
                ("conversations", f"holds {count} <video> placeholders. Fix: exactly one, in a human turn")
            )
    if found:
        return found, {}
    if relative not in listings:
        try:
            listings[relative] = scene_frames(storage.list_names(storage.join(root, relative)))
        except (FileNotFoundError, NotADirectoryError):
            listings[relative] = ([], f"scene folder {relative!r} does not exist under {root}")
    frames, reason = listings[relative]
    if reason:
        return [("video", reason)], {}
    roles, texts = split_conversation(conversation)
    return [], {"scene": relative, "frames": frames, "roles": roles, "texts": texts}


def _video_in_human_turns(turn: int) -> tuple[str, ...]:
    return (VIDEO_PLACEHOLDER,) if turn % 2 == 0 else ()


def sample_positions(available: int, count: int) -> list[int]:
    """Positions among the every-10th frames: a fixed stride from 0, or the list repeated."""
    if available > count:
        stride = available // count
        return [(k * stride) % available for k in range(count)]
    if available < count:
        return (list(range(available)) * (count // available + 1))[:count]
    return list(range(available))


def scanqa_conversation(roles: list[str], texts: list[str], frames: int) -> list[dict[str, str]]:
    """`<video>` in the human turn becomes one `<image>` per frame (a lone one moves first)."""
    conversation = join_conversation(roles, texts)
    for turn in conversation:
        if turn["from"] == ROLES[0]:
            turn["value"] = _image_first(
                turn["value"].replace(VIDEO_PLACEHOLDER, DEFAULT_IMAGE_TOKEN * frames)
            )
    return conversation


def _image_first(value: str) -> str:
    """LLaVA's preprocess_multimodal: a single `<image>` not at the start moves to the start."""
    if value.count(DEFAULT_IMAGE_TOKEN) == 1 and not value.startswith(DEFAULT_IMAGE_TOKEN):
        return (DEFAULT_IMAGE_TOKEN + "\n" + value.replace(DEFAULT_IMAGE_TOKEN, "").strip()).strip()
    return value


class ScanQADataset(CoTrainingDataset):
    task = TASK

    def build(self, i: int) -> tuple[list[dict[str, str]], list[Image.Image]]:
        row = self.table[i]
        count = self.settings.frames_upbound if self.settings.force_sample else DEFAULT_FRAMES
        folder = self.location(row, row["scene"])
        names = [row["frames"][k] for k in sample_positions(len(row["frames"]), count)]
        images = [load_rgb(storage.local_path(storage.join(folder, name))) for name in names]
        return scanqa_conversation(row["roles"], row["texts"], len(images)), images
