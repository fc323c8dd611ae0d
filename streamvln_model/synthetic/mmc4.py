"""Synthetic interleaved image-text documents in the MMC4 layout (co-training task 3).

MMC4 (github.com/allenai/mmc4, used for StreamVLN co-training, arXiv 2507.05240) ships jsonl
shards `docs_shard_<i>_v3.jsonl`, one document per line: `url`, `text_list` (the page's
sentences), `image_info` (per image: `image_name`, `raw_url`, `matched_text_index` = the sentence
it was assigned to, `matched_sim`), `similarity_matrix` (images x sentences CLIP similarities)
and `could_have_url_duplicate`. Images are downloaded separately and stored under their
`image_name`, here in `images/` (the folder `--mmc4_video_folder` names). The loader keeps at most
6 images per document, ordered by matched sentence, so some documents here have more than 6 and
their `image_info` is not in sentence order.

Each image is one colour, and its matched sentence names that colour, so the text that follows an
image in a training sample is predictable from the image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamvln_model.files import write_text_atomically
from streamvln_model.synthetic.common import (
    COLOUR_NAMES,
    check_arguments,
    dataset_folder,
    item_rng,
    save_jpeg,
    solid_frame,
)

IMAGES_DIR = "images"
MAX_IMAGES = 8  # above the loader's cap of 6, so the cap is exercised
URL_ROOT = "https://synthetic.invalid/mmc4"  # `.invalid` never resolves (RFC 2606)
MATCHED_SIM = (0.25, 0.40)  # CLIP similarity of an image to its own sentence
OTHER_SIM = (0.05, 0.20)  # ... and to every other sentence
THINGS = ("kite", "mug", "bicycle", "umbrella", "door", "car", "balloon", "scarf", "boat", "chair")
FILLER = (
    "We spent the afternoon walking around the old town.",
    "The weather was mild and the streets were quiet.",
    "Prices were reasonable for the quality on offer.",
    "Several readers asked where it came from.",
    "It has been in the family for a long time.",
    "The shop closes early on Sundays.",
    "Everything arrived well packed and on time.",
    "There is more about this in the next post.",
)


def shard_name(index: int) -> str:
    return f"docs_shard_{index}_v3.jsonl"


@dataclass(frozen=True)
class MMC4Summary:
    out: Path
    documents: int
    images: int
    shard_names: list[str] = field(default_factory=list)

    @property
    def shard_paths(self) -> list[Path]:
        return [self.out / name for name in self.shard_names]

    @property
    def image_folder(self) -> Path:
        return self.out / IMAGES_DIR


def image_name(seed: int, document: int, image: int) -> str:
    """12 hex digits + `.jpg`, hash-like as MMC4's names, unique per (seed, document, image)."""
    return hashlib.sha1(f"{seed}/{document}/{image}".encode()).hexdigest()[:12] + ".jpg"


def caption(colour: str, thing: str) -> str:
    """The sentence an image is matched to: it names the image's colour."""
    return f"Here is the {colour} {thing} from the photo."


def _sentences(
    colours: list[str], things: list[str], rng: np.random.Generator
) -> tuple[list[str], list[int]]:
    """A title, then per image its caption and 0-2 filler sentences; returns (text_list, caption indices)."""
    text_list = [f"Notes on {len(colours)} things I saw this week."]
    matched = []
    for colour, thing in zip(colours, things, strict=True):
        matched.append(len(text_list))
        text_list.append(caption(colour, thing))
        text_list += [
            str(sentence) for sentence in rng.choice(FILLER, size=int(rng.integers(0, 3)), replace=False)
        ]
    return text_list, matched


def _similarities(matched: list[int], sentences: int, rng: np.random.Generator) -> list[list[float]]:
    """Images x sentences, each image most similar to its own sentence (as MMC4's assignment is)."""
    rows = rng.uniform(*OTHER_SIM, size=(len(matched), sentences))
    for row, index in zip(rows, matched, strict=True):
        row[index] = rng.uniform(*MATCHED_SIM)
    return [[round(float(value), 4) for value in row] for row in rows]


def document(seed: int, index: int, max_images: int, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """One MMC4 record and the colour of each of its images, in `image_info` order."""
    count = int(rng.integers(1, max_images + 1))
    colours = [str(colour) for colour in rng.choice(COLOUR_NAMES, size=count)]
    things = [str(thing) for thing in rng.choice(THINGS, size=count)]
    text_list, matched = _sentences(colours, things, rng)
    similarity = _similarities(matched, len(text_list), rng)
    order = [int(position) for position in rng.permutation(count)]  # page order != sentence order
    image_info = [
        {
            "image_name": image_name(seed, index, image),
            "raw_url": f"{URL_ROOT}/{index:06d}/img{image}.jpg",
            "matched_text_index": matched[image],
            "matched_sim": similarity[image][matched[image]],
        }
        for image in order
    ]
    record = {
        "url": f"{URL_ROOT}/{index:06d}",
        "text_list": text_list,
        "image_info": image_info,
        "similarity_matrix": [similarity[image] for image in order],
        "could_have_url_duplicate": 0,
    }
    return record, [colours[image] for image in order]


def _check(documents: int, shards: int, max_images: int, seed: int, size: tuple[int, int]) -> tuple[int, int]:
    size = check_arguments(seed, size, documents=documents, shards=shards, max_images=max_images)
    if shards > documents:
        raise ValueError(
            f"shards ({shards}) must be <= documents ({documents}): every shard holds a document"
        )
    return size


def write_mmc4(
    out: Path,
    documents: int = 8,
    shards: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (64, 48),
    max_images: int = MAX_IMAGES,
    overwrite: bool = False,
) -> MMC4Summary:
    """Write `documents` documents split over `shards` jsonl shards, and their images, under `out`.

    Deterministic for a given seed (shards byte for byte); `--mmc4_video_folder` is `out/images`.
    """
    size = _check(documents, shards, max_images, seed, size)
    lines: list[str] = []
    images = 0
    with dataset_folder(Path(out), overwrite) as partial:
        (partial / IMAGES_DIR).mkdir()
        for index in range(documents):
            rng = item_rng(seed, index)
            record, colours = document(seed, index, max_images, rng)
            for info, colour in zip(record["image_info"], colours, strict=True):
                save_jpeg(partial / IMAGES_DIR / info["image_name"], solid_frame(colour, size, rng))
            images += len(colours)
            lines.append(json.dumps(record, ensure_ascii=False))
        names = [shard_name(index) for index in range(shards)]
        for name, part in zip(names, np.array_split(np.arange(documents), shards), strict=True):
            write_text_atomically(partial / name, "".join(lines[int(i)] + "\n" for i in part))
    return MMC4Summary(Path(out), documents, images, names)
