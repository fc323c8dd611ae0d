"""Read and check the published trajectory layout: `<source>/annotations.json` + frame folders.

Every problem in every source is collected at once (file, episode, field, reason with the fix),
so a user fixes their data in one pass instead of one error per hours-long launch. Each frame
folder is listed once, however many episodes share it (ScaleVLN-size sets reuse folders), and
frames are ordered by step number (`frames.order_frames`), never as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from streamvln_model.data import locations as storage
from streamvln_model.data.formats.text import text_problem
from streamvln_model.data.media.frames import order_frames
from streamvln_model.data.validation.errors import DataValidationError
from streamvln_model.data.validation.paths import escape_problem
from streamvln_model.data.validation.records import Problem, Root
from streamvln_model.model.constants import ACTION_SYMBOLS, PLACEHOLDER_ACTION

ANNOTATIONS = "annotations.json"


@dataclass
class NavigationScan:
    """What the navigation sources hold, as plain rows (the index stores them as Arrow tables).

    folders: {root, video, frames}: one per distinct frame folder, frames in step order.
    episodes: {folder, episode_id, instructions, actions, sample}: `sample` is the episode's
      quarantine key (`<slot>:<id>`); `folder` indexes `folders`.
    annotation_files: (root index, location, content) of every annotations.json read.
    """

    roots: list[Root]
    folders: list[dict] = field(default_factory=list)
    episodes: list[dict] = field(default_factory=list)
    annotation_files: list[tuple[int, str, bytes]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def frame_folder(source: str, video: str) -> str:
    """Where an episode's frames live in the published layout: `<source>/<video>/rgb`."""
    return storage.join(storage.join(source, video), "rgb")


def split_folders(video_folder: str | list[str] | None) -> list[str]:
    """`--video_folder a,b,c` (the published flag) or a list -> locations (local ones absolute)."""
    if not video_folder:
        return []
    items = video_folder.split(",") if isinstance(video_folder, str) else list(video_folder)
    return [storage.absolute(item.strip()) for item in items if item.strip()]


def navigation_roots(video_folder: str | list[str] | None) -> list[Root]:
    return [Root(f"video_folder[{i}]", location) for i, location in enumerate(split_folders(video_folder))]


def _instructions(raw) -> tuple[list[str], str | None, str | None]:
    """(instructions, field, reason): instructions are text, never template tokens."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        return [], "instructions", f"expected a non-empty string or list of strings, got {raw!r:.80}"
    for k, item in enumerate(items):
        reason = text_problem(item) if isinstance(item, str) else f"expected a string, got {item!r:.80}"
        if reason:
            where = "instructions" if isinstance(raw, str) else f"instructions[{k}]"
            return [], where, reason
    return list(items), None, None


def _actions_problem(raw) -> tuple[str, str] | None:
    if not isinstance(raw, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in raw):
        return "actions", f"expected a list of integers, got {type(raw).__name__}"
    if not raw:
        return "actions", "empty. Fix: one entry per frame (actions[0] is the -1 placeholder)"
    for j, action in enumerate(raw):
        if not (action in ACTION_SYMBOLS or (j == 0 and action == PLACEHOLDER_ACTION)):
            return f"actions[{j}]", (
                f"{action} is not an action id. Fix: use 0 STOP, 1 forward, 2 turn left, 3 turn right "
                f"({PLACEHOLDER_ACTION} only as the placeholder actions[0])"
            )
    return None


class _SourceReader:
    """Checks one source's episodes; lists each frame folder once."""

    def __init__(self, scan: NavigationScan, root_index: int, listed: dict[tuple[int, str], int | str]):
        self.scan = scan
        self.root_index = root_index
        self.root = scan.roots[root_index]
        self.file = storage.join(self.root.location, ANNOTATIONS)
        self.listed = listed  # (root, video) -> folder index, or the reason it is unusable
        self.ids: set[str] = set()

    def problem(self, where: str, field_name: str, reason: str, sample: str | None) -> None:
        self.scan.problems.append(Problem(self.file, f"{where} field {field_name!r}", reason, sample))

    def folder(self, video: str) -> int | str:
        key = (self.root_index, video)
        if key not in self.listed:
            self.listed[key] = self._list(video)
        return self.listed[key]

    def _list(self, video: str) -> int | str:
        escape = escape_problem(self.root.location, video)
        if escape:
            return escape
        location = frame_folder(self.root.location, video)
        try:
            names = storage.list_names(location)
        except (FileNotFoundError, NotADirectoryError):
            return f"frame folder {location} does not exist. Fix: frames go in <source>/<video>/rgb/"
        except storage.StorageError as err:
            return str(err)
        frames, reason = order_frames(names)
        if reason:
            return f"{location}: {reason}"
        self.scan.folders.append({"root": self.root_index, "video": video, "frames": frames})
        return len(self.scan.folders) - 1

    def episode(self, index: int, raw) -> None:
        where = f"episode #{index}"
        if not isinstance(raw, dict):
            self.scan.problems.append(
                Problem(self.file, where, "expected an object with 'video', 'instructions', 'actions'")
            )
            return
        episode_id = raw.get("id", index)
        where += f" (id={episode_id})"
        sample = f"{self.root.slot}:{episode_id}"
        if not isinstance(episode_id, (int, str)) or isinstance(episode_id, bool):
            return self.problem(where, "id", "expected an integer or string", sample)
        if str(episode_id) in self.ids:
            return self.problem(where, "id", "duplicated in this file. Fix: ids must be unique", sample)
        self.ids.add(str(episode_id))
        missing = [k for k in ("video", "instructions", "actions") if k not in raw]
        if missing:
            fields = ", ".join(repr(k) for k in missing)
            self.scan.problems.append(Problem(self.file, where, f"missing field(s) {fields}", sample))
            return
        instructions, field_name, reason = _instructions(raw["instructions"])
        if reason:
            return self.problem(where, field_name, reason, sample)
        bad_actions = _actions_problem(raw["actions"])
        if bad_actions:
            return self.problem(where, bad_actions[0], bad_actions[1], sample)
        video = raw["video"]
        if not isinstance(video, str) or not video:
            return self.problem(
                where, "video", f"expected a folder path relative to {self.root.location}", sample
            )
        folder = self.folder(video)
        if isinstance(folder, str):
            return self.problem(where, "video", folder, sample)
        frames = len(self.scan.folders[folder]["frames"])
        if frames != len(raw["actions"]):
            return self.problem(
                where,
                "actions",
                f"{len(raw['actions'])} entries but {frame_folder(self.root.location, video)} holds {frames} "
                "frames. Fix: one frame per entry of 'actions' (actions[0] is the placeholder for frame 0)",
                sample,
            )
        self.scan.episodes.append(
            {
                "folder": folder,
                "episode_id": str(episode_id),
                "instructions": instructions,
                "actions": raw["actions"],
                "sample": sample,
            }
        )

    def read(self) -> None:
        try:
            content = storage.read_current(self.file)
        except FileNotFoundError:
            self.scan.problems.append(
                Problem(
                    self.file,
                    "",
                    f"missing. Fix: every --video_folder entry must contain {ANNOTATIONS} and its frame "
                    "folders (published StreamVLN trajectory layout)",
                )
            )
            return
        except storage.StorageError as err:  # bucket missing, access denied, endpoint unreachable
            self.scan.problems.append(Problem(self.file, "", str(err)))
            return
        self.scan.annotation_files.append((self.root_index, self.file, content))
        try:
            raw = json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            self.scan.problems.append(
                Problem(
                    self.file, "", f"not valid JSON ({err}). Fix: the file must hold a JSON list of episodes"
                )
            )
            return
        if not isinstance(raw, list):
            self.scan.problems.append(
                Problem(self.file, "", f"top level is {type(raw).__name__}; expected a JSON list of episodes")
            )
            return
        if not raw:
            self.scan.problems.append(
                Problem(self.file, "", "holds no episodes. Fix: remove the source or fill it")
            )
            return
        for i, item in enumerate(raw):
            self.episode(i, item)


def scan_navigation(roots: list[Root]) -> NavigationScan:
    """Every episode of every source, checked; problems collected, nothing raised."""
    scan = NavigationScan(roots=list(roots))
    seen: dict[str, str] = {}
    listed: dict[tuple[int, str], int | str] = {}
    for i, root in enumerate(roots):
        if root.location in seen:
            scan.problems.append(
                Problem(
                    "--video_folder",
                    root.slot,
                    f"{root.location} is listed twice (also as {seen[root.location]}): its samples would "
                    "count twice. Fix: list each source once",
                )
            )
            continue
        seen[root.location] = root.slot
        _SourceReader(scan, i, listed).read()
    if not roots:
        scan.problems.append(
            Problem("--video_folder", "", "empty. Fix: pass one or more comma-separated trajectory folders")
        )
    return scan


def load_episodes(video_folder: str | list[str]) -> NavigationScan:
    """The navigation sources, or DataValidationError listing every problem found."""
    scan = scan_navigation(navigation_roots(video_folder))
    if scan.problems:
        raise DataValidationError(scan.problems)
    return scan
