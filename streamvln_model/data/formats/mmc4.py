"""MMC4 interleaved image-text documents (task 3), the `MMC4_datasets` group of the YAML.

On disk (InternRobotics/StreamVLN `streamvln/dataset/mmc4_dataset.py` `LazyMMC4Dataset`): the
YAML `json_path` is a folder of `.jsonl` / `.json` shards; each line is a document
`{"text_list": [sentence, ...], "image_info": [{"image_name", "matched_text_index", ...}, ...],
"similarity_matrix": ...}` and each image is `<mmc4_video_folder>/<image_name>`.

The sample: the first 6 images of `image_info`, reordered by their matched sentence; image `k`
opens user turn `k` (the first turn is the text before the first matched sentence, then
`<image>`, then "."; later turns are `<image>.`), and the answer is the sentences from its
matched one up to the next image's (the last answer runs to the end), joined without
separators, as published. The similarity matrix is not used (the published loader reads it and
ignores it), so it is not required. A `<image>` written in the text is refused (the published
loader rewrote it to `<IMAGE>`); the published local-path branch parsed the shard *path* as JSON
(`json.loads(path)`), and a broken line there ended the run; here each bad line is a problem
naming the shard and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from streamvln_model.data import locations as storage
from streamvln_model.data.datasets.combined import CoTrainingDataset
from streamvln_model.data.formats.scan import IMAGE, Scan
from streamvln_model.data.formats.text import text_problem
from streamvln_model.data.media.images import load_rgb
from streamvln_model.data.validation.paths import escape_problem
from streamvln_model.data.validation.records import MMC4, Problem
from streamvln_model.model.constants import DEFAULT_IMAGE_TOKEN

TASK = MMC4
MAX_IMAGES = 6  # the published loader keeps the first 6 images of a document

FEATURES = datasets.Features(
    {
        "root": datasets.Value("int32"),
        "sample_id": datasets.Value("string"),  # "<shard file name>:<line number>"
        "text_list": datasets.List(datasets.Value("string")),
        "images": datasets.List(datasets.Value("string")),  # relative to the root, by matched sentence
        "matched": datasets.List(datasets.Value("int32")),  # each image's sentence, ascending
    }
)


def read_jsonl(text: str, source_file: str) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """`(line number, parsed document)` per non-blank line; a line that is not JSON is a problem."""
    entries: list[tuple[int, Any]] = []
    problems: list[Problem] = []
    shard = Path(source_file).name
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            reason = f"is not JSON ({error.msg} at column {error.colno}). Fix: repair or delete the line"
            problems.append(Problem(source_file, f"line {number}", reason, f"{shard}:{number}"))
    return entries, problems


def scan(entries: list, source_file: str, root_index: int, root_location: str) -> Scan:
    """Rows, media and problems of one shard (entries from `read_jsonl`, or plain documents)."""
    result = Scan()
    shard = Path(source_file).name
    for position, item in enumerate(entries):
        number, document = item if isinstance(item, tuple) else (position + 1, item)
        sample_id = f"{shard}:{number}"
        found, row = _scan_document(document, root_location)
        if found:
            result.problems += [
                Problem(source_file, f"line {number} field {f!r}", r, sample_id) for f, r in found
            ]
            continue
        row.update(root=root_index, sample_id=sample_id)
        result.add_row(row, [(name, IMAGE) for name in row["images"]], sum(len(t) for t in row["text_list"]))
    return result


def _scan_document(document: Any, root: str) -> tuple[list[tuple[str, str]], dict]:
    if not isinstance(document, dict):
        return [("document", "is not an object. Fix: {text_list, image_info}")], {}
    sentences, images = document.get("text_list"), document.get("image_info")
    if not isinstance(sentences, list) or not sentences:
        return [("text_list", "missing or empty. Fix: the document's sentences")], {}
    found = [(f"text_list[{k}]", r) for k, s in enumerate(sentences) if (r := text_problem(s))]
    if not isinstance(images, list) or not images:
        found.append(("image_info", "missing or empty. Fix: at least one {image_name, matched_text_index}"))
        return found, {}
    chosen: list[tuple[int, str]] = []
    for k, image in enumerate(images[:MAX_IMAGES]):
        reason, pair = _image_problem(image, len(sentences), root)
        if reason:
            found.append((f"image_info[{k}]", reason))
        else:
            chosen.append(pair)
    if found:
        return found, {}
    chosen.sort(key=lambda pair: pair[0])  # stable: images matched to one sentence keep their order
    return [], {"text_list": sentences, "images": [n for _, n in chosen], "matched": [m for m, _ in chosen]}


def _image_problem(image: Any, sentences: int, root: str) -> tuple[str | None, tuple[int, str]]:
    if not isinstance(image, dict):
        return "is not an object. Fix: {image_name, matched_text_index}", (0, "")
    name, index = image.get("image_name"), image.get("matched_text_index")
    if not isinstance(name, str) or not name:
        return "has no image_name. Fix: the image file, relative to the MMC4 image folder", (0, "")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < sentences:
        return f"matched_text_index {index!r} is not a sentence of text_list (0..{sentences - 1})", (0, "")
    return escape_problem(root, name), (index, name)


def mmc4_conversation(sentences: list[str], matched: list[int]) -> list[dict[str, str]]:
    """One user turn per image (in sentence order); each answer runs to the next image's sentence."""
    conversation = []
    for k, start in enumerate(matched):
        lead = "".join(sentences[:start]) if k == 0 else ""
        end = matched[k + 1] if k + 1 < len(matched) else len(sentences)
        conversation.append({"from": "human", "value": f"{lead}{DEFAULT_IMAGE_TOKEN}."})
        conversation.append({"from": "gpt", "value": "".join(sentences[start:end])})
    return conversation


class MMC4Dataset(CoTrainingDataset):
    task = TASK

    def build(self, i: int) -> tuple[list[dict[str, str]], list[Image.Image]]:
        row = self.table[i]
        images = [load_rgb(storage.local_path(self.location(row, name))) for name in row["images"]]
        return mmc4_conversation(row["text_list"], row["matched"]), images
