"""Media paths stay inside their root: no absolute paths, no `..` escape, no symlink escape.

A `video` entry that points outside its source folder reads data nobody indexed or
fingerprinted: deleting a frame there would not change the data stage's cache key, and a
shared annotations file could read any file the training host can. Every format resolves its
relative paths through `escape_problem` before anything is read.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from streamvln_model.data import locations as storage


def escape_problem(root: str, relative: str) -> str | None:
    """Why `relative` does not stay inside `root`, or None when it does."""
    if not relative:
        return "empty path"
    if relative.startswith(("/", "\\")) or os.path.isabs(relative) or "://" in relative:
        return f"{relative!r} is absolute. Fix: write it relative to {root}"
    normal = posixpath.normpath(relative.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        return f"{relative!r} leaves its root {root} through '..'. Fix: keep the data inside {root}"
    if storage.is_remote(root):
        return None  # object stores have no symlinks; keys are plain strings
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(Path(root) / normal))
    if real != real_root and real_root not in real.parents:
        return (
            f"{relative!r} resolves to {real}, outside its root {real_root} (a symlink). "
            f"Fix: copy the data into {root} instead of linking out of it"
        )
    return None
