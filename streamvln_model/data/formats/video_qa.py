"""Video QA (task 1): LLaVA-Video-178K style JSON lists, the `QA_datasets` group of the YAML.

On disk (InternRobotics/StreamVLN `streamvln/streamvln_train.py` `LazySupervisedDataset`, taken
from LLaVA-NeXT `llava/train/train.py`): a JSON list of entries
`{"id", "video", "data_source", "conversations": [{"from": "human"|"gpt", "value"}...]}`; the
video is `<qa_video_folder>/<data_source>/<video>`, a video file or a folder of frame images.

The sample: frames sampled as in `video.py`; the first human turn loses its `<image>` and starts
with one `<image>` per frame, then (with `--add_time_instruction`) the published time sentence:
`<image>`*N + "\\n" + time sentence + "\\n" + first turn. Without the time instruction the first
turn is `<image>`*N + "\\n" + its stripped text: the published code keeps one `<image>` for the
whole video (LLaVA-NeXT pools a video into one block), but this model splices one block per
`<image>` placeholder, so each frame gets its own. Frame folders also get the time sentence
(in the published StreamVLN code they hit an undefined variable and were silently replaced by
the next sample).
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
    VIDEO,
    Scan,
    conversation_problems,
    entry_label,
    join_conversation,
    split_conversation,
)
from streamvln_model.data.media.images import load_rgb
from streamvln_model.data.media.video import (
    FOLDER_FPS,
    folder_frame_indices,
    is_video_file,
    order_frame_folder,
    read_frames,
    stream_info,
    time_instruction,
    video_frame_indices,
)
from streamvln_model.data.validation.paths import escape_problem
from streamvln_model.data.validation.records import QA, Problem
from streamvln_model.model.constants import DEFAULT_IMAGE_TOKEN

TASK = QA
# LLaVA-NeXT's preprocess_multimodal deletes this VideoInstruct-100k marker from every turn.
NOISE_MARKER = "QA_GT_caption_based_noisy"

FEATURES = datasets.Features(
    {
        "root": datasets.Value("int32"),
        "sample_id": datasets.Value("string"),
        "id": datasets.Value("string"),
        "video": datasets.Value("string"),  # relative to the root: <data_source>/<video>
        "kind": datasets.Value("string"),  # "video" (a file) or "folder" (frame images)
        "frames": datasets.List(datasets.Value("string")),  # folder frames in order; [] for files
        "roles": datasets.List(datasets.Value("string")),
        "texts": datasets.List(datasets.Value("string")),
    }
)


def scan(entries: list, source_file: str, root_index: int, root_location: str) -> Scan:
    """Rows, media and problems of one QA annotation list (frame folders are listed, not read)."""
    result = Scan()
    listings: dict[str, tuple[list[str], str | None]] = {}
    for number, entry in enumerate(entries):
        sample_id = f"{Path(source_file).name}#{number}"
        label = entry_label(number, entry)
        found, row = _scan_entry(entry, root_location, listings)
        if found:
            result.problems += [Problem(source_file, f"{label} field {f!r}", r, sample_id) for f, r in found]
            continue
        row.update(root=root_index, sample_id=sample_id, id=str(entry.get("id", "")))
        result.add_row(row, [(row["video"], row["kind"])], sum(len(t) for t in row["texts"]))
    return result


def _scan_entry(entry, root: str, listings: dict) -> tuple[list[tuple[str, str]], dict]:
    if not isinstance(entry, dict):
        return [("entry", "is not an object. Fix: {video, conversations, data_source}")], {}
    video, source = entry.get("video"), entry.get("data_source", "")
    if not isinstance(video, str) or not video:
        return [
            ("video", "missing. Fix: the video file or frame folder, relative to the QA video folder")
        ], {}
    if not isinstance(source, str):
        return [("data_source", "is not a string. Fix: the sub-folder name, or drop the field")], {}
    relative = posixpath.join(source, video) if source else video
    found = [("video", reason) for reason in [escape_problem(root, relative)] if reason]
    conversation = entry.get("conversations")
    found += conversation_problems(conversation, _image_in_first_turn)
    if not found and conversation[0]["value"].count(DEFAULT_IMAGE_TOKEN) > 1:
        found.append(
            ("conversations[0].value", "holds more than one <image>; the video is one. Fix: keep one")
        )
    if found:
        return found, {}
    kind, frames = VIDEO, []
    if not is_video_file(relative):
        kind = FOLDER
        frames, reason = _listing(root, relative, listings)
        if reason:
            return [("video", reason)], {}
    roles, texts = split_conversation(conversation)
    return [], {"video": relative, "kind": kind, "frames": frames, "roles": roles, "texts": texts}


def _image_in_first_turn(turn: int) -> tuple[str, ...]:
    return (DEFAULT_IMAGE_TOKEN,) if turn == 0 else ()


def _listing(root: str, relative: str, listings: dict) -> tuple[list[str], str | None]:
    if relative not in listings:
        try:
            listings[relative] = order_frame_folder(storage.list_names(storage.join(root, relative)))
        except (FileNotFoundError, NotADirectoryError):
            listings[relative] = ([], f"{relative!r} is neither a video file (by suffix) nor a frame folder")
    return listings[relative]


def qa_conversation(
    roles: list[str], texts: list[str], frames: int, time_sentence: str | None
) -> list[dict[str, str]]:
    """The published turns: `<image>` per frame (and the time sentence) opening the first turn."""
    conversation = join_conversation(roles, [text.replace(NOISE_MARKER, "") for text in texts])
    first = conversation[0]["value"].replace(DEFAULT_IMAGE_TOKEN, "")
    opening = DEFAULT_IMAGE_TOKEN * frames
    if time_sentence is None:
        conversation[0]["value"] = f"{opening}\n{first.strip()}"
    else:
        conversation[0]["value"] = f"{opening}\n{time_sentence}\n{first}"
    return conversation


class VideoQADataset(CoTrainingDataset):
    task = TASK

    def sample_frames(self, row: dict) -> tuple[list[Image.Image], float, list[float]]:
        """The sampled frames, the video's duration and the frames' timestamps."""
        s = self.settings
        location = self.location(row, row["video"])
        if row["kind"] == FOLDER:
            frames = row["frames"]
            indices, times = folder_frame_indices(len(frames), s.frames_upbound, s.force_sample)
            images = [load_rgb(storage.local_path(storage.join(location, frames[k]))) for k in indices]
            return images, len(frames) / FOLDER_FPS, times
        info = stream_info(location)
        indices, times = video_frame_indices(info, s.video_fps, s.frames_upbound, s.force_sample)
        return read_frames(location, indices), info.duration, times

    def build(self, i: int) -> tuple[list[dict[str, str]], list[Image.Image]]:
        row = self.table[i]
        images, duration, times = self.sample_frames(row)
        sentence = time_instruction(duration, times) if self.settings.add_time_instruction else None
        return qa_conversation(row["roles"], row["texts"], len(images), sentence), images
