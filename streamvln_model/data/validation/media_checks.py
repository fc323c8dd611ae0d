"""Decode every image and video a data set uses before training starts, once per file version.

Without this, a corrupt frame surfaces only when a data-loader worker reaches it, hours into a
GPU run. `check_media` opens each file before training, in parallel worker processes, and
reports for each one whether it decodes (`problem`, with the fix) and a digest of its bytes,
which the sample index puts into its key so that changing one frame changes the key.

Results are cached in a sqlite file keyed by (location, size, version): the modification time
in nanoseconds for local files, the ETag for object-store files (`storage.list_files`). So a
re-check of an unchanged data set reads no file content, a changed file is checked again, and
results are committed in batches as they arrive, so an interrupted check (Ctrl-C, a killed job)
resumes where it stopped. Several processes may share one cache file (WAL journal, busy timeout).

A "video" is a video file or a folder of frame images (as LLaVA-Video-178K stores some of its
videos, see `video.py`); a folder is checked by decoding each of its frames.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import posixpath
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile

from streamvln_model.data import locations as storage
from streamvln_model.data.media.frames import is_frame
from streamvln_model.data.validation.records import Problem

IMAGE = "image"
VIDEO = "video"
KINDS = (IMAGE, VIDEO)

# Files per worker task: large enough that pickling and scheduling cost little next to decoding
# (~1 ms per 640x480 JPEG), small enough that a commit, and so the work an interrupt loses,
# stays a few seconds at most.
CHUNK_FILES = 256
# Fewer files than this to check finish before a progress bar would say anything useful.
PROGRESS_MIN_FILES = 512
# Cached rows are valid only for the checks that wrote them: bump the suffix when a check changes.
_TABLE = "media_checks_v1"
_BUSY_TIMEOUT_S = 120.0
_HASH_BLOCK = 1 << 20
_FIX = "re-export or remove the file"


@dataclass(frozen=True)
class MediaResult:
    """What checking one file found.

    `digest` is the blake2b-128 hex digest of the file's bytes (of a frame folder: of its frame
    names and their digests); None when they could not be read. `problem` is None when the file
    decodes, else the reason with the fix. `info` holds {"width", "height", "mode"} for images
    (the mode as stored: training converts to RGB) and {"frames", "fps", "duration"} for videos.
    """

    location: str
    digest: str | None
    problem: str | None
    kind: str
    info: dict = field(default_factory=dict)

    def to_problem(self, sample: str | None = None) -> Problem | None:
        """The shared `Problem` record naming this file, or None when it decodes."""
        if self.problem is None:
            return None
        return Problem(file=self.location, field=self.kind, reason=self.problem, sample=sample)


@dataclass(frozen=True)
class _Version:
    """One version of a file: its size and tag (mtime in ns, ETag; of a folder, of its listing)."""

    size: int
    tag: str


@dataclass(frozen=True)
class _Checked:
    """A worker's result and the bytes it read (None: a read error, which is never cached)."""

    result: MediaResult
    bytes_read: int | None


# --- checking one file -------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _digest_file(path: Path) -> tuple[str, int]:
    """Digest and byte count of a file, read in blocks (a video need not fit in memory)."""
    hasher = hashlib.blake2b(digest_size=16)
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            hasher.update(block)
            size += len(block)
    return hasher.hexdigest(), size


def _decode_image(data: bytes) -> tuple[dict[str, Any], str | None]:
    """(info, None) when `data` fully decodes as an image, else (info so far, the problem).

    JPEGs are decoded at 1/8 scale (`Image.draft`): libjpeg still reads every entropy-coded
    byte, so truncation is caught exactly as by a full decode (the tests cut JPEGs at many
    positions), while the full-size inverse DCT and colour conversion, about a third of the cost of
    a 640x480 frame, are skipped. Other formats are decoded in full.
    """
    if not data:
        return {}, f"empty file (0 bytes): {_FIX}"
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        return {}, f"not an image Pillow can read (the file starts with {data[:16]!r}): {_FIX}"
    except Exception as error:  # a malformed header raises anything from ValueError to SyntaxError
        what = "truncated" if "truncated" in str(error).lower() else "unreadable"
        return {}, f"{what} image header ({type(error).__name__}: {error}): {_FIX}"
    with image:
        info = {"width": image.width, "height": image.height, "mode": image.mode}
        kind = image.format or "image"
        try:
            if image.format == "JPEG":
                image.draft(None, (1, 1))
            image.load()
        except OSError as error:
            what = "truncated" if "truncated" in str(error) else "corrupt"
            return info, f"{what} {kind} ({error}): {_FIX}"
        except Exception as error:  # e.g. DecompressionBombError, a broken palette
            return info, f"corrupt {kind} ({type(error).__name__}: {error}): {_FIX}"
    return info, None


def _check_image(location: str, tag: str) -> _Checked:
    data = storage.read_bytes(location, version=tag or None)
    info, problem = _decode_image(data)
    return _Checked(MediaResult(location, _digest(data), problem, IMAGE, info), len(data))


def _video_problem(error: Exception, *names: str) -> str:
    """A VideoError's reason without its leading location (the result names the file)."""
    message = str(error)
    for name in names:
        message = message.removeprefix(f"{name}: ")
    return message


def _check_video_file(location: str, tag: str) -> _Checked:
    from streamvln_model.data.media.video import (  # PyAV loads only where videos are checked
        VideoError,
        probe_video,
    )

    local = storage.local_path(location, version=tag or None)
    digest, size = _digest_file(local)
    try:
        probed = probe_video(local)
    except VideoError as error:
        problem = _video_problem(error, str(local), location)
        return _Checked(MediaResult(location, digest, problem, VIDEO, {}), size)
    info = {"frames": probed.frames, "fps": probed.fps, "duration": probed.duration}
    return _Checked(MediaResult(location, digest, None, VIDEO, info), size)


def _check_frame_folder(location: str) -> _Checked:
    """A frame-folder video: its frame order and every frame decoded; digest over (name, digest)."""
    from streamvln_model.data.media.video import VideoError, order_frame_folder, probe_video

    tags = {name: tag for name, _, tag in storage.list_files(location, recursive=False)}
    try:
        probed = probe_video(location)
    except VideoError as error:
        return _Checked(MediaResult(location, None, _video_problem(error, location), VIDEO, {}), None)
    names, _ = order_frame_folder(list(tags))
    hasher = hashlib.blake2b(digest_size=16)
    read = 0
    problem = None
    for name in names:
        data = storage.read_bytes(storage.join(location, name), version=tags[name] or None)
        read += len(data)
        hasher.update(f"{name}\0{_digest(data)}\n".encode())
        _, frame_problem = _decode_image(data)
        if problem is None and frame_problem is not None:
            problem = f"frame {name}: {frame_problem}"
    info = {"frames": probed.frames, "fps": probed.fps, "duration": probed.duration}
    return _Checked(MediaResult(location, hasher.hexdigest(), problem, VIDEO, info), read)


def _check_one(location: str, kind: str, tag: str, is_folder: bool) -> _Checked:
    """Check one file; never raises, so one bad file cannot lose the rest of its chunk."""
    try:
        if kind == IMAGE:
            return _check_image(location, tag)
        return _check_frame_folder(location) if is_folder else _check_video_file(location, tag)
    except (OSError, storage.StorageError) as error:
        # Read errors may be passing (permissions, the network): reported, never cached.
        return _Checked(_unreadable(location, kind, error), None)
    except Exception as error:  # a decoder bug on one file must not abort a data set's check
        problem = f"the check itself failed ({type(error).__name__}: {error}): {_FIX}"
        return _Checked(MediaResult(location, None, problem, kind, {}), None)


def _check_chunk(chunk: Sequence[tuple[str, str, str, bool]]) -> list[_Checked]:
    """A worker task: a batch of files (one task per file would cost more than a decode)."""
    return [_check_one(*item) for item in chunk]


def _unreadable(location: str, kind: str, error: BaseException) -> MediaResult:
    if isinstance(error, FileNotFoundError):
        problem = "missing: no such file; restore it or fix the path in the annotations"
    elif isinstance(error, PermissionError):
        problem = f"unreadable ({error}): grant the training user read permission"
    elif isinstance(error, IsADirectoryError):
        problem = "a folder, not an image file: point the annotations at the file itself"
    else:
        problem = f"unreadable ({type(error).__name__}: {error}): fix or remove the file"
    return MediaResult(location, None, problem, kind, {})


# --- file versions -----------------------------------------------------------------------------
def _frame_folder_version(location: str) -> _Version:
    """A folder changes when any frame is added, removed or changed: its listing is its tag."""
    entries = [entry for entry in storage.list_files(location, recursive=False) if is_frame(entry[0])]
    listing = "".join(f"{name}\0{size}\0{tag}\n" for name, size, tag in entries)
    return _Version(sum(size for _, size, _ in entries), _digest(listing.encode()))


def _file_version(location: str) -> _Version:
    if not storage.is_remote(location):
        stat = os.stat(location)
        return _Version(stat.st_size, str(stat.st_mtime_ns))
    entries = storage.list_files(location, recursive=False)
    name = posixpath.basename(location.rstrip("/"))
    if len(entries) != 1 or entries[0][0] != name:
        raise IsADirectoryError(f"{location} is a prefix (folder), not an object")
    return _Version(entries[0][1], entries[0][2])


def _version(location: str, kind: str) -> tuple[_Version | None, bool, OSError | None]:
    """(version, is a frame folder, read error) of one location; no content is read.

    Storage errors other than a missing object (wrong endpoint, credentials) raise: they are
    the same for every file, and one message says more than a hundred thousand.
    """
    try:
        if kind == VIDEO and storage.isdir(location):
            return _frame_folder_version(location), True, None
        return _file_version(location), False, None
    except OSError as error:
        return None, False, error


def _folder_versions(
    folder: str, names: list[str]
) -> dict[str, tuple[_Version | None, bool, OSError | None]]:
    """Versions of remote images in one folder from ONE listing (not one request per frame)."""
    try:
        listed = {name: (size, tag) for name, size, tag in storage.list_files(folder, recursive=False)}
    except FileNotFoundError:
        listed = {}
    found = {}
    for name in names:
        location = storage.join(folder, name)
        if name in listed:
            found[location] = (_Version(*listed[name]), False, None)
        else:
            found[location] = (None, False, FileNotFoundError(location))
    return found


def _versions(kinds: dict[str, str]) -> dict[str, tuple[_Version | None, bool, OSError | None]]:
    """Versions of all locations; object-store lookups are network round trips, so they overlap,
    and remote images are looked up one listing per folder (a frame folder holds hundreds)."""
    locations = list(kinds)
    if not any(storage.is_remote(location) for location in locations):
        return {location: _version(location, kinds[location]) for location in locations}
    folders: dict[str, list[str]] = {}
    single = []
    for location in locations:
        if storage.is_remote(location) and kinds[location] == IMAGE:
            folder, name = location.rsplit("/", 1)
            folders.setdefault(folder, []).append(name)
        else:
            single.append(location)
    found: dict[str, tuple[_Version | None, bool, OSError | None]] = {}
    with ThreadPoolExecutor(max_workers=32) as pool:
        for part in pool.map(_folder_versions, list(folders), list(folders.values())):
            found.update(part)
        found.update(zip(single, pool.map(_version, single, [kinds[loc] for loc in single]), strict=True))
    return {location: found[location] for location in locations}


# --- the cache ---------------------------------------------------------------------------------
def _open_cache(cache_path: Path) -> sqlite3.Connection:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(cache_path), timeout=_BUSY_TIMEOUT_S)
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            _set_up(connection)
            return connection
        except sqlite3.OperationalError as error:
            # Switching a new file to WAL while another process does the same can report
            # "locked" at once, without waiting on the busy timeout: wait here instead.
            if "locked" not in str(error) or time.monotonic() > deadline:
                connection.close()
                raise
            time.sleep(0.05)


def _set_up(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(
        f"CREATE TABLE IF NOT EXISTS {_TABLE} (location TEXT NOT NULL, size INTEGER NOT NULL,"
        " version TEXT NOT NULL, kind TEXT NOT NULL, digest TEXT, problem TEXT, info TEXT NOT NULL,"
        " PRIMARY KEY (location, size, version))"
    )
    connection.commit()


def _cached(
    connection: sqlite3.Connection, location: str, kind: str, version: _Version
) -> MediaResult | None:
    row = connection.execute(
        f"SELECT digest, problem, info FROM {_TABLE} WHERE location=? AND size=? AND version=? AND kind=?",
        (location, version.size, version.tag, kind),
    ).fetchone()
    if row is None:
        return None
    return MediaResult(location, row[0], row[1], kind, json.loads(row[2]))


def _store(connection: sqlite3.Connection, rows: Sequence[tuple[MediaResult, _Version]]) -> None:
    """Commit a batch of results in one transaction; older versions of the files are dropped."""
    with connection:
        for result, version in rows:
            connection.execute(f"DELETE FROM {_TABLE} WHERE location=?", (result.location,))
            connection.execute(
                f"INSERT INTO {_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    result.location,
                    version.size,
                    version.tag,
                    result.kind,
                    result.digest,
                    result.problem,
                    json.dumps(result.info),
                ),
            )


def _cacheable(
    batch: list[_Checked], versions: dict[str, tuple[_Version | None, bool, OSError | None]]
) -> list[tuple[MediaResult, _Version]]:
    """Results worth keeping: the bytes read match the version's size (a file rewritten while
    it was checked is checked again next time)."""
    rows = []
    for checked in batch:
        version = versions[checked.result.location][0]
        if version is not None and version.tag and checked.bytes_read == version.size:
            rows.append((checked.result, version))
    return rows


# --- running the checks ------------------------------------------------------------------------
def _unique(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Location -> kind, in first-occurrence order; a file listed with two kinds is an input error."""
    kinds: dict[str, str] = {}
    for location, kind in items:
        location = str(location)
        if kind not in KINDS:
            raise ValueError(f"{location}: media kind {kind!r} is not one of {KINDS}")
        if kinds.setdefault(location, kind) != kind:
            raise ValueError(
                f"{location}: listed both as {kinds[location]!r} and as {kind!r}; "
                "a file is either an image or a video"
            )
    return kinds


def _chunks(todo: list, workers: int) -> list[list]:
    """At most CHUNK_FILES per task, and at least ~4 tasks per worker so the load balances."""
    size = max(1, min(CHUNK_FILES, math.ceil(len(todo) / (4 * workers))))
    return [todo[start : start + size] for start in range(0, len(todo), size)]


def _run_serial(chunks: list[list]) -> Iterator[list[_Checked]]:
    for chunk in chunks:
        yield _check_chunk(chunk)


def _run_parallel(chunks: list[list], workers: int) -> Iterator[list[_Checked]]:
    """Chunk results as they complete; on an interrupt, queued chunks are dropped at once.

    Workers are forked where the platform can: they start in milliseconds, and they run only
    file reads, hashing and Pillow, none of which waits on a lock another thread of the caller
    (a Prefect task runner, a log shipper) could hold at fork time. A fork server or spawn would
    import torch again in every pool (seconds) and re-run an unguarded calling script.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
    try:
        # A bounded number of tasks in flight, so results (and commits) flow from the start.
        queue = iter(chunks)
        pending: set[Future] = {pool.submit(_check_chunk, chunk) for chunk in islice(queue, 2 * workers)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                following = next(queue, None)
                if following is not None:
                    pending.add(pool.submit(_check_chunk, following))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _progress_bar(total: int, done: int, enabled: bool):
    if not enabled or total - done < PROGRESS_MIN_FILES:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="file", desc="checking media", file=sys.stderr)


def check_media(
    items: Sequence[tuple[str, str]],
    *,
    cache_path: Path | None,
    workers: int | None = None,
    progress: bool = True,
) -> list[MediaResult]:
    """Decode every (location, kind) in `items`; one result per item, in input order.

    `kind` is "image" or "video"; a location listed twice is checked once. With `cache_path`,
    unchanged files (same size and mtime/ETag) are answered from the cache without being read,
    and new results are committed chunk by chunk. `workers` processes (default: the CPU count)
    decode in parallel; 1 decodes in this process.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ValueError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images would "
            "pass as good: set it to False before checking media"
        )
    kinds = _unique(items)
    versions = _versions(kinds)
    results: dict[str, MediaResult] = {}
    connection = _open_cache(Path(cache_path)) if cache_path is not None else None
    with closing(connection) if connection is not None else nullcontext():
        todo: list[tuple[str, str, str, bool]] = []
        for location, kind in kinds.items():
            version, is_folder, error = versions[location]
            if version is None:
                results[location] = _unreadable(location, kind, error or FileNotFoundError(location))
                continue
            hit = _cached(connection, location, kind, version) if connection and version.tag else None
            if hit is not None:
                results[location] = hit
            else:
                todo.append((location, kind, version.tag, is_folder))
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
        bar = _progress_bar(len(kinds), len(kinds) - len(todo), progress)
        chunks = _chunks(todo, workers)
        batches = _run_serial(chunks) if workers == 1 else _run_parallel(chunks, workers)
        try:
            for batch in batches:
                for checked in batch:
                    results[checked.result.location] = checked.result
                if connection is not None:
                    _store(connection, _cacheable(batch, versions))
                if bar is not None:
                    bar.update(len(batch))
        finally:
            batches.close()  # stops the pool now, also when an interrupt lands in this loop
            if bar is not None:
                bar.close()
    return [results[str(location)] for location, _ in items]
