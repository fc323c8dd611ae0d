"""Content fingerprints of inputs, used as cache keys (an unchanged input is a cache hit).

Small files are hashed by content. Files above `CONTENT_LIMIT` (model weights, videos) are keyed
by name, size and modification time: hashing tens of GB on every plan would cost more than it
saves. Directories are walked in sorted order so the key does not depend on listing order.

URLs (`s3://bucket/prefix`) are keyed by their listing: relative path, size and version tag
(the ETag) of every object under them. A changed object changes its ETag, so the key changes
without downloading anything; an unchanged prefix costs only LIST requests.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from streamvln_model.data import locations as storage

CONTENT_LIMIT = 64 * 1024 * 1024


def _update_file(digest, path: Path, rel: str) -> None:
    stat = path.stat()
    digest.update(f"F{rel}\0{stat.st_size}\0".encode())
    if stat.st_size <= CONTENT_LIMIT:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(str(stat.st_mtime_ns).encode())


def _update_remote(digest, url: str) -> None:
    """Hash the listing of a remote file or prefix (a missing one hashes as missing, like local)."""
    digest.update(f"U{url.rstrip('/')}\0".encode())
    try:
        entries = storage.list_files(url)
    except FileNotFoundError:
        digest.update(b"missing")
        return
    for relative, size, tag in entries:
        digest.update(f"O{relative}\0{size}\0{tag}\0".encode())


def fingerprint(paths: Iterable[str | Path], *, frames_by_size: bool = True) -> str:
    """sha256 over files, directory trees and remote prefixes; local frame images count by name
    and size only (remote objects always by their ETag, which costs nothing extra)."""
    digest = hashlib.sha256()
    for raw in paths:
        if storage.is_remote(raw):
            _update_remote(digest, str(raw))
            continue
        root = Path(raw).expanduser().resolve()
        digest.update(f"R{root}\0".encode())
        if not root.exists():
            digest.update(b"missing")
            continue
        if root.is_file():
            _update_file(digest, root, root.name)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = str(path.relative_to(root))
                if frames_by_size and name.lower().endswith((".jpg", ".jpeg", ".png")):
                    digest.update(f"I{rel}\0{path.stat().st_size}\0".encode())
                else:
                    _update_file(digest, path, rel)
    return digest.hexdigest()
