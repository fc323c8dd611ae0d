"""Check all training data once, before any GPU starts, and index it under a content key.

`check_data` reads every annotation file once (navigation sources, the `--data_path` mixture and
the files it names), checks every sample's structure, text and paths, decodes every image and
video the samples use (`media_checks`, parallel and resumable), estimates each sample's tokens,
and applies the policy: any problem fails the run, unless `--max_invalid_fraction F` allows
skipping (and quarantining, by name, in the report) at most that share of samples. Nothing is
ever silently substituted.

The content key hashes what was read (annotation bytes, the mixture's entries, each media
file's digest) with paths relative to their root slot, never the mount point: the same data
mounted elsewhere gets the same key and reuses the index; one changed frame or annotation gets
a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE, SampleShape
from streamvln_model.data import locations as storage
from streamvln_model.data.datasets.sampling import validate_sampling
from streamvln_model.data.formats.annotations import NavigationScan, navigation_roots, scan_navigation
from streamvln_model.data.formats.cotraining import CoTrainingSource, cotraining_roots, scan_cotraining
from streamvln_model.data.formats.scan import entry_label
from streamvln_model.data.formats.text import estimate_text_tokens
from streamvln_model.data.validation.errors import DataValidationError
from streamvln_model.data.validation.media_checks import MediaResult, check_media
from streamvln_model.data.validation.records import MMC4, QA, SCANQA, Problem, Root
from streamvln_model.data.validation.report import ValidationReport, token_histogram

# Bump when the index layout or what a row means changes: old indexes then miss the key.
INDEX_FORMAT = 2
# Template text around a navigation sample's instruction: system message, task prompt, ChatML.
NAVIGATION_PROMPT_CHARS = 420
TURN_CHARS = 60


@dataclass(frozen=True)
class DataSettings:
    """The data flags that decide what is read and what a sample is (all from the one schema)."""

    video_folder: str | None
    shape: SampleShape = STREAMVLN_SHAPE
    remove_init_turns: bool = False
    multi_task_training: bool = False
    data_path: str | None = None
    qa_video_folder: str | None = None
    scanqa_video_folder: str | None = None
    mmc4_video_folder: str | None = None
    frames_upbound: int = 0
    force_sample: bool = False
    add_time_instruction: bool = False
    video_fps: int = 1
    max_invalid_fraction: float = 0.0
    seed: int = 0
    model_max_length: int | None = None
    tokens_per_frame: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.shape, Mapping):  # read back from `asdict` (the flow's task parameters)
            object.__setattr__(self, "shape", SampleShape(**self.shape))

    @classmethod
    def of(
        cls,
        data: Mapping[str, Any],
        training: Mapping[str, Any],
        tokens_per_frame: int | None = None,
        given: frozenset[str] | None = None,
    ) -> DataSettings:
        """From resolved DataArguments / TrainingArguments (dataclass `vars()` or the flow's dicts).

        The sample shape is `SampleShape.from_arguments(data, given)`: what the run sets, StreamVLN's
        value where it leaves a field unset (and, with `given`, where the user did not name it).
        """
        names = set(cls.__dataclass_fields__) - {"shape", "seed", "model_max_length", "tokens_per_frame"}
        values = {name: data[name] for name in names if name in data and data[name] is not None}
        return cls(
            **values,
            shape=SampleShape.from_arguments(data, given),
            seed=int(training.get("seed", 0)),
            model_max_length=training.get("model_max_length"),
            tokens_per_frame=tokens_per_frame,
        )

    def key_fields(self) -> dict[str, Any]:
        """What changes the rows, besides the data itself (locations excluded on purpose)."""
        excluded = {
            "video_folder",
            "qa_video_folder",
            "scanqa_video_folder",
            "mmc4_video_folder",
            "data_path",
        }
        fields = {k: v for k, v in vars(self).items() if k not in excluded and k != "shape"}
        return {**fields, **self.shape.as_dict()}  # flat, as before the shape had its own type

    def roots(self) -> list[Root]:
        return navigation_roots(self.video_folder) + (cotraining_roots(self) if self.cotraining else [])

    @property
    def cotraining(self) -> bool:
        return bool(self.multi_task_training and self.data_path)


@dataclass
class DataCheck:
    """A checked data set: what to index (problem samples already removed) and the report."""

    settings: DataSettings
    roots: list[Root]
    navigation: NavigationScan
    cotraining: list[CoTrainingSource]
    report: ValidationReport
    key: str = ""
    quarantined: set[str] = field(default_factory=set)


def _media_items(nav: NavigationScan, sources: list[CoTrainingSource], roots: list[Root]) -> list[tuple]:
    """(root position, path relative to the root, kind) of every media file the samples use."""
    items: dict[tuple[int, str], str] = {}
    for folder in nav.folders:
        for name in folder["frames"]:
            items[(folder["root"], f"{folder['video']}/rgb/{name}")] = "image"
    for source in sources:
        for _, relative, kind in source.scan.media:
            items[(source.root_index, relative)] = kind
    return [(root, rel, kind) for (root, rel), kind in items.items()]


def _listed(location: str, kind: str) -> MediaResult:
    """Without decoding: the file must exist; it counts by size in the key (benchmarks only)."""
    try:
        size = storage.list_files(location, recursive=False)[0][1]  # a listing, no download
    except FileNotFoundError:
        return MediaResult(location, None, "missing. Fix: restore the file or drop the sample", kind)
    return MediaResult(location, f"size:{size}", None if size else "zero-byte file", kind)


def _media_problems(items, results, nav: NavigationScan, sources: list[CoTrainingSource]) -> list[Problem]:
    """A file that does not decode disqualifies every sample that uses it."""
    bad = {
        (root, rel): result for (root, rel, _), result in zip(items, results, strict=True) if result.problem
    }
    problems: list[Problem] = []
    if not bad:
        return problems
    folder_of = {(f["root"], f["video"]): i for i, f in enumerate(nav.folders)}
    bad_folders: dict[int, Any] = {}
    for (root, rel), result in bad.items():
        video = rel.rsplit("/rgb/", 1)[0]
        if (root, video) in folder_of:
            bad_folders.setdefault(folder_of[(root, video)], result)
    for episode in nav.episodes:
        if episode["folder"] in bad_folders:
            result = bad_folders[episode["folder"]]
            problems.append(Problem(result.location, "frame", result.problem, episode["sample"]))
    for source in sources:
        for row, relative, _ in source.scan.media:
            result = bad.get((source.root_index, relative))
            if result is not None:
                problems.append(_entry_media_problem(source, source.scan.rows[row], result))
    return problems


# The annotation field that names a co-training sample's media, per task.
MEDIA_FIELDS = {QA: "video", SCANQA: "video", MMC4: "image_info"}


def _entry_media_problem(source: CoTrainingSource, row: dict, result: MediaResult) -> Problem:
    """A media problem as the user fixes it: in the annotation file, at the entry that names it."""
    sample = row["sample_id"]
    number = int(sample.rsplit("#" if source.task != MMC4 else ":", 1)[1])
    label = f"line {number}" if source.task == MMC4 else entry_label(number, {"id": row.get("id")})
    field_name = f"{label} field {MEDIA_FIELDS[source.task]!r}"
    return Problem(source.json_file, field_name, f"{result.location}: {result.problem}", sample)


def _navigation_tokens(nav: NavigationScan, settings: DataSettings) -> list[tuple[str, str, int]]:
    """(file, sample key, estimated tokens) of each episode's longest sample."""
    if not settings.tokens_per_frame:
        return []
    shape = settings.shape
    turns = -(-shape.num_frames // shape.num_future_steps)
    frames_max = shape.num_history + turns
    visual = frames_max * settings.tokens_per_frame
    out = []
    for episode in nav.episodes:
        chars = (
            max(len(text) for text in episode["instructions"]) + NAVIGATION_PROMPT_CHARS + turns * TURN_CHARS
        )
        folder = nav.folders[episode["folder"]]
        file = storage.join(nav.roots[folder["root"]].location, "annotations.json")
        out.append((file, episode["sample"], estimate_text_tokens(chars) + visual))
    return out


def _cotraining_tokens(sources: list[CoTrainingSource], settings: DataSettings) -> list[tuple[str, str, int]]:
    out = []
    for source in sources:
        for row, chars in zip(source.scan.rows, source.scan.text_chars, strict=True):
            frames = source.visual_frames(row, settings)
            visual = frames * (settings.tokens_per_frame or 0)
            out.append((source.json_file, row["sample_id"], estimate_text_tokens(chars) + visual))
    return out


def _length_problems(tokens: list[tuple[str, str, int]], limit: int | None) -> list[Problem]:
    if not limit:
        return []
    return [
        Problem(
            file,
            sample,
            f"estimated {count} tokens exceed --model_max_length {limit}: the tail would be cut. "
            "Fix: raise model_max_length, lower frames, or drop the sample",
            sample,
        )
        for file, sample, count in tokens
        if count > limit
    ]


def _content_key(check: DataCheck, items, results) -> str:
    digest = hashlib.sha256()
    roots = check.roots

    def add(*parts: Any) -> None:
        digest.update(json.dumps(parts, sort_keys=True, default=str).encode() + b"\n")

    add("format", INDEX_FORMAT, check.settings.key_fields())
    for root_index, _, content in check.navigation.annotation_files:
        add("annotations", roots[root_index].slot, hashlib.sha256(content).hexdigest())
    for source in check.cotraining:
        add("mixture", source.identity(), roots[source.root_index].slot)
    # One line per media file, straight into the hash (millions of frames at ScaleVLN size).
    for (root, rel, kind), result in sorted(zip(items, results, strict=True), key=lambda p: p[0][:2]):
        digest.update(f"M\0{roots[root].slot}\0{rel}\0{kind}\0{result.digest}\n".encode())
    add("quarantined", sorted(check.quarantined))
    return digest.hexdigest()


def _apply_policy(problems: list[Problem], units: int, settings: DataSettings) -> set[str]:
    """The sample keys to quarantine, or DataValidationError when the policy refuses the data."""
    fatal = [p for p in problems if p.sample is None]
    bad = {p.sample for p in problems if p.sample is not None}
    fraction = len(bad) / units if units else 0.0
    if fatal or fraction > settings.max_invalid_fraction:
        if problems and not fatal and settings.max_invalid_fraction > 0:
            problems = [
                *problems,
                Problem(
                    "--max_invalid_fraction",
                    "",
                    f"{len(bad)} of {units} samples ({fraction:.2%}) have problems, above the allowed "
                    f"{settings.max_invalid_fraction:.2%}. Fix: repair the data or raise the fraction",
                ),
            ]
        raise DataValidationError(problems)
    return bad


def check_data(
    settings: DataSettings,
    *,
    check_cache: Path | None = None,
    decode: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> DataCheck:
    """Read and check everything the run would train on; raise DataValidationError on refusal.

    The raised error carries the validation report (`err.report`), so callers publish it even
    when the run stops here. `decode=False` skips opening images and videos (benchmarks only):
    media then count by name and size in the key.
    """
    validate_sampling(settings.shape.num_frames, settings.shape.num_history, settings.shape.num_future_steps)
    roots = settings.roots()
    nav_roots = [root for root in roots if root.slot.startswith("video_folder[")]
    nav = scan_navigation(nav_roots)
    sources, co_problems = scan_cotraining(settings, roots) if settings.cotraining else ([], [])
    problems = [*nav.problems, *co_problems, *(p for s in sources for p in s.scan.problems)]
    items = _media_items(nav, sources, roots)
    # A frame folder standing for a video (LLaVA-Video-178K) is checked as a video.
    locations = [
        (storage.join(roots[root].location, rel), "image" if kind == "image" else "video")
        for root, rel, kind in items
    ]
    if decode:
        results = check_media(locations, cache_path=check_cache, workers=workers, progress=progress)
    else:
        results = [_listed(location, kind) for location, kind in locations]
    problems += _media_problems(items, results, nav, sources)
    tokens = _navigation_tokens(nav, settings) + _cotraining_tokens(sources, settings)
    problems += _length_problems(tokens, settings.model_max_length)
    # Samples the scans already rejected count once each (a co-training entry may have several
    # problems); accepted ones are the episodes and rows that remain.
    rejected = {p.sample for p in [*nav.problems, *(p for s in sources for p in s.scan.problems)] if p.sample}
    units = len(nav.episodes) + sum(len(s.scan.rows) for s in sources) + len(rejected)
    report = ValidationReport.build(roots, nav, sources, problems, token_histogram([t for *_, t in tokens]))
    try:
        quarantined = _apply_policy(problems, units, settings)
    except DataValidationError as err:
        err.report = report.failed(problems).to_dict()
        raise
    nav.episodes = [e for e in nav.episodes if e["sample"] not in quarantined]
    for source in sources:
        source.drop(quarantined)
    check = DataCheck(settings, roots, nav, sources, report.passed(quarantined), quarantined=quarantined)
    check.key = _content_key(check, items, results)
    check.report.key = check.key
    return check
