"""Read the stage-two mixture: the `--data_path` YAML, the files it names, each format's scan.

The YAML's groups name the task (QA, ScanQA, MMC4); each entry's `json_path` is read once
(local or s3://), subsampled by its `sampling_strategy` (seeded with the run's seed), and
scanned by its format module. Media paths in the rows are relative to the task's root flag
(`--qa_video_folder`, `--scanqa_video_folder`, `--mmc4_video_folder`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from streamvln_model.data import locations as storage
from streamvln_model.data.formats import mixture, mmc4, scanqa, video_qa
from streamvln_model.data.formats.scan import Scan
from streamvln_model.data.validation.records import MMC4, QA, SCANQA, TASK_NAMES, Problem, Root

if TYPE_CHECKING:
    from streamvln_model.data.validation.check import DataSettings

FORMATS: dict[int, ModuleType] = {QA: video_qa, SCANQA: scanqa, MMC4: mmc4}
ROOT_FLAGS: dict[int, str] = {QA: "qa_video_folder", SCANQA: "scanqa_video_folder", MMC4: "mmc4_video_folder"}


def cotraining_roots(settings: DataSettings) -> list[Root]:
    return [
        Root(flag, storage.absolute(getattr(settings, flag)))
        for flag in ROOT_FLAGS.values()
        if getattr(settings, flag, None)
    ]


@dataclass
class CoTrainingSource:
    """One YAML entry: its file, how it was subsampled, and the scanned rows."""

    task: int
    group: str
    json_file: str
    content_digest: str
    sampling_strategy: str
    sampling_subset: list[str] | None
    root_index: int
    scan: Scan

    def identity(self) -> list:
        """What the index key needs: the entry and the content it read, not where it lives."""
        return [self.group, self.sampling_strategy, self.sampling_subset, self.content_digest]

    def drop(self, quarantined: set[str]) -> None:
        """Remove quarantined rows (and re-point their media) before indexing."""
        keep = [i for i, row in enumerate(self.scan.rows) if row["sample_id"] not in quarantined]
        position = {old: new for new, old in enumerate(keep)}
        self.scan.rows = [self.scan.rows[i] for i in keep]
        self.scan.text_chars = [self.scan.text_chars[i] for i in keep]
        self.scan.media = [(position[r], rel, kind) for r, rel, kind in self.scan.media if r in position]

    def visual_frames(self, row: dict, settings: DataSettings) -> int:
        """Frames a row puts in front of the model (for the token estimate)."""
        if "images" in row:
            return len(row["images"])
        return settings.frames_upbound or settings.shape.num_frames


def _read_entries(task: int, location: str, content: bytes) -> tuple[list, list[Problem]]:
    if task == MMC4:
        return mmc4.read_jsonl(content.decode("utf-8", errors="replace"), location)
    try:
        entries = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [], [Problem(location, "", f"not valid JSON ({err}). Fix: a JSON list of samples")]
    if not isinstance(entries, list) or not entries:
        return [], [Problem(location, "", "expected a non-empty JSON list of samples")]
    return entries, []


def scan_cotraining(
    settings: DataSettings, roots: list[Root]
) -> tuple[list[CoTrainingSource], list[Problem]]:
    """Every YAML entry scanned; problems that concern a whole file or setting come back apart."""
    problems: list[Problem] = []
    try:
        text = storage.read_current(settings.data_path).decode("utf-8")
    except FileNotFoundError:
        return [], [Problem(settings.data_path, "", "missing. Fix: --data_path names the co-training YAML")]
    except storage.StorageError as err:
        return [], [Problem(settings.data_path, "", str(err))]
    entries, yaml_problems = mixture.read_mixture(text, settings.data_path)
    problems += yaml_problems
    slots = {root.slot: i for i, root in enumerate(roots)}
    sources = []
    for n, entry in enumerate(entries):
        flag = ROOT_FLAGS[entry.task]
        where = f"{entry.group}[{n}] json_path"
        if flag not in slots:
            problems.append(
                Problem(
                    settings.data_path, where, f"a {TASK_NAMES[entry.task]} entry needs --{flag}. Fix: set it"
                )
            )
            continue
        try:
            content = storage.read_current(entry.json_path)
        except FileNotFoundError:
            problems.append(Problem(settings.data_path, where, f"{entry.json_path} does not exist"))
            continue
        except storage.StorageError as err:
            problems.append(Problem(settings.data_path, where, str(err)))
            continue
        items, read_problems = _read_entries(entry.task, entry.json_path, content)
        problems += read_problems
        chosen = mixture.select(items, entry.sampling_strategy, settings.seed, entry.sampling_subset)
        root = slots[flag]
        scan = FORMATS[entry.task].scan(chosen, entry.json_path, root, roots[root].location)
        sources.append(
            CoTrainingSource(
                task=entry.task,
                group=entry.group,
                json_file=entry.json_path,
                content_digest=hashlib.sha256(content).hexdigest(),
                sampling_strategy=entry.sampling_strategy,
                sampling_subset=entry.sampling_subset,
                root_index=root,
                scan=scan,
            )
        )
    return sources, problems
