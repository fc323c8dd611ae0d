"""The stage-two co-training YAML (`--data_path`): which annotation files, how many samples.

Published format (InternRobotics/StreamVLN `streamvln/streamvln_train.py`
`make_supervised_data_module` with `--multi_task_training`, `LazySupervisedDataset`, and
`streamvln/dataset/mmc4_dataset.py`):

    QA_datasets:            # task 1, videos under --qa_video_folder
      - json_path: llava_video_178k/0_30_s_academic.json
        sampling_strategy: random:20%
        sampling_subset: academic,youtube
    SCANQA_datasets:        # task 2, scenes under --scanqa_video_folder
      - json_path: scanqa_train.json
    MMC4_datasets:          # task 3, json_path is a folder of shards, images under --mmc4_video_folder
      - json_path: mmc4/shards

`sampling_strategy` is `all` (default), `first:N`, `end:N` or `random:N`, with N a count or `P%`
of the file's entries rounded up (`ceil(P * len / 100)`); `random` takes the first N of a
shuffled copy. `sampling_subset` (comma-separated keywords, case-insensitive) then keeps the
entries whose `video` path contains any keyword: the subset filter applies *after* the strategy,
as published. For MMC4 the strategy selects shard files (as published), not documents.

Differences from the published reader, on purpose: the shuffle is seeded (the published one uses
the global `random` state, so ranks and reruns could train on different subsets); `first`/`end`/
`random` without N, N = 0 (`end:0` selected everything), a percentage that is not an integer
1..100, empty keywords (a trailing comma matched everything), unknown keys in an entry, and
unknown groups are problems; a missing group means no samples of that task instead of a crash.
LLaVA-NeXT's single-task `datasets:` group is not read by StreamVLN's multi-task loader, so it is
refused with the rename that makes it QA data.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from streamvln_model.data.validation.records import MMC4, QA, SCANQA, Problem

GROUPS: dict[str, int] = {"QA_datasets": QA, "SCANQA_datasets": SCANQA, "MMC4_datasets": MMC4}
ENTRY_KEYS = ("json_path", "sampling_strategy", "sampling_subset")
STRATEGIES = ("first", "end", "random")
_AMOUNT = re.compile(r"^(\d+)(%?)$")


@dataclass(frozen=True)
class MixtureEntry:
    """One `json_path` of a YAML group, with its task and how to sample it."""

    group: str
    task: int
    json_path: str
    sampling_strategy: str
    sampling_subset: list[str] | None


def parse_strategy(strategy: str) -> tuple[str, int | None, bool]:
    """`(kind, N, N is a percentage)`; ValueError with the fix for anything else."""
    if strategy == "all":
        return "all", None, False
    kind, _, amount = str(strategy).partition(":")
    match = _AMOUNT.match(amount.strip())
    if kind not in STRATEGIES or match is None:
        raise ValueError(
            f"sampling_strategy {strategy!r} is not all, first:N, end:N or random:N (N a count or P%). "
            "Fix: e.g. random:20% or first:1000"
        )
    number, percent = int(match.group(1)), bool(match.group(2))
    if number < 1 or (percent and number > 100):
        raise ValueError(f"sampling_strategy {strategy!r}: N must be 1 or more (a percentage 1..100)")
    return kind, number, percent


def parse_subset(subset: Any) -> list[str] | None:
    """Keywords of `sampling_subset` (comma string or list), lower-cased; None for all."""
    if subset is None or subset == "all":
        return None
    parts = subset.split(",") if isinstance(subset, str) else subset
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise ValueError("sampling_subset must be comma-separated keywords. Fix: e.g. 'youtube,academic'")
    keywords = [p.strip().lower() for p in parts if p.strip()]
    if not keywords:
        raise ValueError(
            "sampling_subset holds no keyword (it would keep everything). Fix: name one, or drop it"
        )
    return keywords


def read_mixture(yaml_text: str, source_file: str) -> tuple[list[MixtureEntry], list[Problem]]:
    """Every entry of the co-training YAML, and a problem for each thing wrong with it."""
    try:
        document = yaml.safe_load(yaml_text)
    except yaml.YAMLError as error:
        return [], [Problem(source_file, "", f"is not YAML ({error}). Fix: the syntax error")]
    if not isinstance(document, dict) or not document:
        return [], [Problem(source_file, "", f"holds no groups. Fix: a mapping with {', '.join(GROUPS)}")]
    entries: list[MixtureEntry] = []
    problems: list[Problem] = []
    for group, items in document.items():
        if group not in GROUPS:
            problems.append(Problem(source_file, str(group), _unknown_group(group)))
            continue
        if not isinstance(items, list) or not items:
            problems.append(Problem(source_file, group, "is not a list of {json_path, ...} entries"))
            continue
        for k, item in enumerate(items):
            entry, found = _read_entry(group, k, item, source_file)
            entries += [entry] if entry else []
            problems += found
    return entries, problems


def _unknown_group(group: Any) -> str:
    if group == "datasets":
        return "is LLaVA-NeXT's single-task group; StreamVLN's co-training reads QA_datasets. Fix: rename it"
    return f"is not a co-training group. Fix: one of {', '.join(GROUPS)}"


def _read_entry(group: str, k: int, item: Any, source: str) -> tuple[MixtureEntry | None, list[Problem]]:
    where = f"{group}[{k}]"
    if not isinstance(item, dict):
        return None, [Problem(source, where, "is not a mapping. Fix: - json_path: <file>")]
    problems = [
        Problem(source, f"{where}.{key}", f"is not a known key. Fix: one of {', '.join(ENTRY_KEYS)}")
        for key in item
        if key not in ENTRY_KEYS
    ]
    path = item.get("json_path")
    if not isinstance(path, str) or not path.strip():
        problems.append(
            Problem(source, f"{where}.json_path", "missing. Fix: the annotation file (or MMC4 folder)")
        )
    strategy, subset = item.get("sampling_strategy", "all"), None
    try:
        parse_strategy(strategy)
    except ValueError as error:
        problems.append(Problem(source, f"{where}.sampling_strategy", str(error)))
    try:
        subset = parse_subset(item.get("sampling_subset"))
    except ValueError as error:
        problems.append(Problem(source, f"{where}.sampling_subset", str(error)))
    if problems:
        return None, problems
    return MixtureEntry(group, GROUPS[group], path, str(strategy), subset), []


def _video_key(item: Any) -> str:
    return item.get("video", "") if isinstance(item, dict) else ""


def select(
    items: Sequence,
    strategy: str,
    seed: int,
    subset: list[str] | None = None,
    key: Callable[[Any], str] = _video_key,
) -> list:
    """The entries a strategy and subset keep (see the module docstring); same seed, same subset."""
    kind, number, percent = parse_strategy(strategy)
    chosen = list(items)
    if kind != "all":
        count = math.ceil(number * len(chosen) / 100) if percent else number
        if kind == "first":
            chosen = chosen[:count]
        elif kind == "end":
            chosen = chosen[-count:]
        else:
            random.Random(seed).shuffle(chosen)
            chosen = chosen[:count]
    if subset:
        keywords = [word.lower() for word in subset]
        chosen = [item for item in chosen if any(word in str(key(item)).lower() for word in keywords)]
    return chosen
