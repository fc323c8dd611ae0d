"""The sample index: one Arrow row per (episode, instruction, chunk start), built once.

Workers memory-map it (`datasets.load_from_disk`) instead of holding every episode as Python
objects in every dataloader worker, and never re-scan the frame folders.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

from ..constants import ACTION_NAMES
from .annotations import Episode
from .sampling import MIN_ACTIONS, chunk_starts, current_steps, history_steps, target_actions

INDEX_FEATURES = datasets.Features(
    {
        "source": datasets.Value("string"),
        "episode_id": datasets.Value("string"),
        "video": datasets.Value("string"),
        "instruction": datasets.Value("string"),
        "instruction_index": datasets.Value("int32"),
        "actions": datasets.List(datasets.Value("int8")),
        "frames": datasets.List(datasets.Value("string")),
        "start": datasets.Value("int32"),
    }
)


@dataclass
class IndexSummary:
    """What the data stage found; logged as an MLflow artifact and shown in Prefect."""

    sources: list[str]
    episodes: int
    skipped_short_episodes: int
    samples: int
    samples_with_history: int
    frames_per_sample_max: int
    samples_per_source: dict[str, int] = field(default_factory=dict)
    action_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def sample_rows(episodes: list[Episode], num_frames: int) -> list[dict]:
    rows = []
    for episode in episodes:
        if len(episode.actions) < MIN_ACTIONS:
            continue
        for k, instruction in enumerate(episode.instructions):
            for start in chunk_starts(len(episode.actions), num_frames):
                rows.append(
                    {
                        "source": episode.source,
                        "episode_id": episode.episode_id,
                        "video": episode.video,
                        "instruction": instruction,
                        "instruction_index": k,
                        "actions": list(episode.actions),
                        "frames": list(episode.frames),
                        "start": start,
                    }
                )
    return rows


def build_index(
    episodes: list[Episode], num_frames: int, num_history: int, num_future_steps: int
) -> tuple[datasets.Dataset, IndexSummary]:
    rows = sample_rows(episodes, num_frames)
    index = datasets.Dataset.from_list(rows, features=INDEX_FEATURES)
    used = [e for e in episodes if len(e.actions) >= MIN_ACTIONS]
    frames_max = max(
        (
            len(history_steps(r["start"], num_history))
            + len(current_steps(r["start"], len(r["actions"]), num_frames, num_future_steps))
            for r in rows
        ),
        default=0,
    )
    actions = Counter(a for e in used for a in target_actions(list(e.actions)))
    summary = IndexSummary(
        sources=sorted({e.source for e in episodes}),
        episodes=len(used),
        skipped_short_episodes=len(episodes) - len(used),
        samples=len(rows),
        samples_with_history=sum(r["start"] > 0 for r in rows),
        frames_per_sample_max=frames_max,
        samples_per_source=dict(Counter(r["source"] for r in rows)),
        action_counts={ACTION_NAMES[a]: n for a, n in sorted(actions.items())},
    )
    return index, summary


def save_index(index: datasets.Dataset, directory: Path) -> Path:
    """Write next to the target then rename, so a crash never leaves a half-written index."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    index.save_to_disk(str(partial))
    if directory.exists():
        shutil.rmtree(directory)
    partial.rename(directory)
    return directory


def load_index(directory: str | Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(directory))
