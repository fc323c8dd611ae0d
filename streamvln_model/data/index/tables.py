"""The navigation sample index: three Arrow tables built once, memory-mapped by every worker.

* `folders`: one row per distinct frame folder (root position, `video`, frames in step order);
* `episodes`: one row per episode (its folder, id, instructions, actions);
* `samples`: one row per (episode, instruction, chunk start), plus the leading turns that
  `--remove_init_turns` drops for that instruction.

Rows hold paths relative to a root and the root's position, never an absolute location, so
the index does not depend on where the data is mounted. Episodes that share a frame folder
(ScaleVLN-size sets) share its row; a sample is three small integers. Workers read rows on
demand from the memory-mapped files instead of holding every episode as Python objects in
every dataloader worker (the published loader's cost).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

from streamvln_model.data.datasets.sampling import (
    MIN_ACTIONS,
    chunk_starts,
    current_steps,
    history_steps,
    target_actions,
)
from streamvln_model.data.formats.annotations import NavigationScan
from streamvln_model.model.constants import ACTION_LEFT, ACTION_NAMES, ACTION_RIGHT, PLACEHOLDER_ACTION

FOLDER_FEATURES = datasets.Features(
    {
        "root": datasets.Value("int32"),
        "video": datasets.Value("string"),
        "frames": datasets.List(datasets.Value("string")),
    }
)
EPISODE_FEATURES = datasets.Features(
    {
        "folder": datasets.Value("int32"),
        "episode_id": datasets.Value("string"),
        "instructions": datasets.List(datasets.Value("string")),
        "actions": datasets.List(datasets.Value("int8")),
    }
)
SAMPLE_FEATURES = datasets.Features(
    {
        "episode": datasets.Value("int32"),
        "instruction_index": datasets.Value("int32"),
        "start": datasets.Value("int32"),
        "offset": datasets.Value("int32"),
    }
)
TABLES = ("folders", "episodes", "samples")

# Words by which an instruction mentions turning (for --remove_init_turns).
_TURN_WORDS = re.compile(r"\b(turn|turning|left|right|around|rotate|face|facing|spin)\b", re.IGNORECASE)


def leading_turns(actions: list[int], instruction: str) -> int:
    """How many leading turns `--remove_init_turns` drops for this instruction.

    Our rule (the published code left the option unfinished): an episode often starts with the
    agent rotating in place to face the path. When the instruction never mentions turning (no
    "turn", "left", "right", "around", "rotate", "face", "spin"), those leading turns are not
    grounded in the language, so the steps before the first non-turn action are dropped: the
    sample starts at the frame where the agent faces the path. An instruction that mentions
    turning keeps every step.
    """
    if _TURN_WORDS.search(instruction):
        return 0
    count = 0
    for action in actions[1:]:
        if action not in (ACTION_LEFT, ACTION_RIGHT):
            break
        count += 1
    return count


def trimmed(actions: list[int], offset: int) -> list[int]:
    """The episode's actions once `offset` leading steps are dropped (a new placeholder first)."""
    return actions if offset == 0 else [PLACEHOLDER_ACTION, *actions[offset + 1 :]]


@dataclass
class IndexSummary:
    """What the navigation index holds; part of the validation report."""

    episodes: int
    skipped_short_episodes: int
    samples: int
    samples_with_history: int
    frames_per_sample_max: int
    samples_per_source: dict[str, int] = field(default_factory=dict)
    action_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NavigationIndex:
    """The three tables and the current location of each root (position -> location)."""

    folders: datasets.Dataset
    episodes: datasets.Dataset
    samples: datasets.Dataset
    roots: list[str]

    def __len__(self) -> int:
        return len(self.samples)

    def _cell(self, table: str, column: str, i: int):
        """One value straight from the memory-mapped Arrow table (no per-row dict formatting)."""
        return getattr(self, table).data.table.column(column)[i].as_py()

    def row(self, i: int) -> dict:
        """Sample `i` joined with its episode and folder (actions and frames after any trim)."""
        episode, k, start, offset = (self._cell("samples", c, i) for c in SAMPLE_FEATURES)
        folder = self._cell("episodes", "folder", episode)
        return {
            "root": self._cell("folders", "root", folder),
            "video": self._cell("folders", "video", folder),
            "episode_id": self._cell("episodes", "episode_id", episode),
            "instruction_index": k,
            "instruction": self._cell("episodes", "instructions", episode)[k],
            "actions": trimmed(self._cell("episodes", "actions", episode), offset),
            "frames": self._cell("folders", "frames", folder)[offset:],
            "start": start,
            "offset": offset,
        }

    def __getitem__(self, key: int | str):
        """A joined row by position, or a column of the samples table by name (`index["start"]`)."""
        return self.samples[key] if isinstance(key, str) else self.row(key)

    def __iter__(self):
        return (self.row(i) for i in range(len(self)))

    def save(self, directory: Path) -> None:
        for name in TABLES:
            getattr(self, name).save_to_disk(str(directory / name))

    @classmethod
    def load(cls, directory: Path, roots: list[str]) -> NavigationIndex:
        tables = [datasets.load_from_disk(str(directory / name)) for name in TABLES]
        return cls(*tables, roots=list(roots))


def _sample_rows(episodes: list[dict], num_frames: int, remove_init_turns: bool) -> tuple[list[list], int]:
    """Columns of the samples table, and how many episodes were too short to use."""
    columns: list[list] = [[], [], [], []]
    short = 0
    for e, episode in enumerate(episodes):
        actions = episode["actions"]
        used = False
        for k, instruction in enumerate(episode["instructions"]):
            offset = leading_turns(actions, instruction) if remove_init_turns else 0
            length = len(actions) - offset
            if length < MIN_ACTIONS:
                continue
            used = True
            for start in chunk_starts(length, num_frames):
                for column, value in zip(columns, (e, k, start, offset), strict=True):
                    column.append(value)
        short += not used
    return columns, short


def build_index(
    scan: NavigationScan,
    num_frames: int,
    num_history: int,
    num_future_steps: int,
    remove_init_turns: bool = False,
) -> tuple[NavigationIndex, IndexSummary]:
    """Arrow tables from a checked scan (see `annotations.load_episodes`)."""
    columns, short = _sample_rows(scan.episodes, num_frames, remove_init_turns)
    samples = datasets.Dataset.from_dict(
        dict(zip(SAMPLE_FEATURES, columns, strict=True)), features=SAMPLE_FEATURES
    )
    folders = datasets.Dataset.from_list(scan.folders, features=FOLDER_FEATURES)
    episodes = datasets.Dataset.from_dict(
        {name: [e[name] for e in scan.episodes] for name in EPISODE_FEATURES}, features=EPISODE_FEATURES
    )
    index = NavigationIndex(folders, episodes, samples, roots=[root.location for root in scan.roots])
    return index, summarize(scan, columns, short, num_frames, num_history, num_future_steps)


def summarize(
    scan: NavigationScan,
    columns: list[list],
    short: int,
    num_frames: int,
    num_history: int,
    num_future_steps: int,
) -> IndexSummary:
    episode_of, _, starts, offsets = columns
    lengths = [len(scan.episodes[e]["actions"]) - o for e, o in zip(episode_of, offsets, strict=True)]
    frames_max = max(
        (
            len(history_steps(s, num_history)) + len(current_steps(s, n, num_frames, num_future_steps))
            for s, n in zip(starts, lengths, strict=True)
        ),
        default=0,
    )
    per_source = Counter(
        scan.roots[scan.folders[scan.episodes[e]["folder"]]["root"]].slot for e in episode_of
    )
    actions = Counter(a for e in set(episode_of) for a in target_actions(list(scan.episodes[e]["actions"])))
    return IndexSummary(
        episodes=len(scan.episodes) - short,
        skipped_short_episodes=short,
        samples=len(starts),
        samples_with_history=sum(s > 0 for s in starts),
        frames_per_sample_max=frames_max,
        samples_per_source=dict(per_source),
        action_counts={ACTION_NAMES[a]: n for a, n in sorted(actions.items())},
    )
