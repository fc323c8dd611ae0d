"""Read and validate the published trajectory layout: `<source>/annotations.json` + frame folders.

Every problem in every source is collected and reported at once (file, episode, field, fix), so
a user fixes their data in one pass instead of one error per hours-long launch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..constants import ACTION_SYMBOLS, PLACEHOLDER_ACTION
from .errors import DataValidationError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
ANNOTATIONS = "annotations.json"


@dataclass(frozen=True)
class Episode:
    source: str  # absolute source folder
    episode_id: str
    video: str  # relative to the source folder, as written in annotations.json
    instructions: tuple[str, ...]
    actions: tuple[int, ...]
    frames: tuple[str, ...]  # frame file names in <video>/rgb, sorted


def frame_folder(source: str | Path, video: str) -> Path:
    """Where an episode's frames live in the published layout."""
    return Path(source) / video / "rgb"


def split_folders(video_folder: str | list[str]) -> list[Path]:
    """`--video_folder a,b,c` (the published flag) or a list -> absolute paths."""
    items = video_folder.split(",") if isinstance(video_folder, str) else list(video_folder)
    return [Path(item.strip()).expanduser().resolve() for item in items if item.strip()]


def list_frames(frame_dir: Path) -> list[str]:
    with os.scandir(frame_dir) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(FRAME_SUFFIXES) and e.is_file())


def _instructions(raw, where: str, problems: list[str]) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
        problems.append(
            f"{where} field 'instructions': expected a non-empty string or list of strings, got {raw!r}"
        )
        return ()
    return tuple(items)


def _actions(raw, where: str, problems: list[str]) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in raw):
        problems.append(f"{where} field 'actions': expected a list of integers, got {type(raw).__name__}")
        return ()
    for j, action in enumerate(raw):
        allowed = action in ACTION_SYMBOLS or (j == 0 and action == PLACEHOLDER_ACTION)
        if not allowed:
            problems.append(
                f"{where} field 'actions'[{j}] = {action} is not an action id. Fix: use 0 STOP, 1 forward, "
                f"2 turn left, 3 turn right ({PLACEHOLDER_ACTION} only as the placeholder actions[0])"
            )
    return tuple(raw)


def _episode(source: Path, index: int, raw, annotations: Path, problems: list[str]) -> Episode | None:
    where = f"{annotations}: episode #{index}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected an object with 'video', 'instructions', 'actions'")
        return None
    where += f" (id={raw.get('id', '?')})"
    missing = [k for k in ("video", "instructions", "actions") if k not in raw]
    if missing:
        problems.append(f"{where}: missing field(s) {', '.join(repr(k) for k in missing)}")
        return None
    count = len(problems)
    instructions = _instructions(raw["instructions"], where, problems)
    actions = _actions(raw["actions"], where, problems)
    if not isinstance(raw["video"], str) or not raw["video"]:
        problems.append(f"{where} field 'video': expected a folder path relative to {source}")
        return None
    frame_dir = frame_folder(source, raw["video"])
    if not frame_dir.is_dir():
        problems.append(f"{where} field 'video': frame folder {frame_dir} does not exist")
        return None
    frames = list_frames(frame_dir)
    if actions and len(frames) != len(actions):
        problems.append(
            f"{where} field 'actions' has {len(actions)} entries but {frame_dir} holds {len(frames)} frames. "
            "Fix: one frame per entry of 'actions' (actions[0] is the placeholder for the first frame)"
        )
    if len(problems) > count:
        return None
    return Episode(str(source), str(raw.get("id", index)), raw["video"], instructions, actions, tuple(frames))


def load_source(source: Path, problems: list[str]) -> list[Episode]:
    annotations = source / ANNOTATIONS
    if not annotations.is_file():
        problems.append(
            f"{annotations}: missing. Fix: every --video_folder entry must contain {ANNOTATIONS} "
            "and an images/ folder (published StreamVLN trajectory layout)"
        )
        return []
    try:
        raw = json.loads(annotations.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(
            f"{annotations}: not valid JSON ({err}). Fix: the file must hold a JSON list of episodes"
        )
        return []
    if not isinstance(raw, list):
        problems.append(f"{annotations}: top level is {type(raw).__name__}; expected a JSON list of episodes")
        return []
    episodes = [_episode(source, i, item, annotations, problems) for i, item in enumerate(raw)]
    return [e for e in episodes if e is not None]


def load_episodes(video_folder: str | list[str]) -> list[Episode]:
    """All episodes of all sources, or DataValidationError listing every problem found."""
    folders = split_folders(video_folder)
    problems: list[str] = []
    if not folders:
        problems.append("--video_folder is empty. Fix: pass one or more comma-separated source folders")
    episodes = [e for folder in folders for e in load_source(folder, problems)]
    if problems:
        raise DataValidationError(problems)
    return episodes
