"""Where data files live: local paths or object-store URLs (`s3://bucket/key`), read through one API.

Every data reader (annotations, frame folders, videos, YAML json paths, MMC4 images, the index)
goes through these functions, so any of them may be a local path or a URL of any fsspec protocol
(`s3://` is the one tested). Remote files are fetched once per machine into a read-through cache
(`cache_dir()`) and served from there afterwards without any request: a training epoch reads
every frame many times, and object-store requests cost latency and money. An object is treated
as immutable once indexed; the data stage notices a changed object through the listing
fingerprint (`streamvln_model.fingerprint`), and a reader that knows an object's version tag
(from `list_files`) passes it as `version=` so a changed object gets a new cache entry.

Credentials and the endpoint come only from the environment and the standard AWS configuration
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`,
`~/.aws/config`), never from arguments, so no secret travels in a flow parameter. botocore
(under aiobotocore/s3fs) reads all of these itself. See docs/STORAGE.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamvln_model.files import write_text_atomically

CACHE_ENV = "STREAMVLN_DATA_CACHE"

# Settings that change which server or account a filesystem talks to: a new value (a test, a
# job switching endpoints) gets a new filesystem instead of a cached one pointing elsewhere.
_CONFIG_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_MAX_ATTEMPTS",
)
_BACKEND_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec")
_NAME_LIMIT = 100  # characters of the object name kept in a cache file name (readability only)


class StorageError(ValueError):
    """A remote location cannot be read; the message names the URL and the fix."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """No object (or no prefix) at a URL. Also a FileNotFoundError, as a missing local file is."""


# --- locations ---------------------------------------------------------------------------------
def is_remote(location: str | Path) -> bool:
    """True for URLs with a protocol (`s3://bucket/key`), False for local paths."""
    return "://" in str(location)


def join(location: str | Path, relative: str) -> str:
    """`relative` under `location`, with `/` separators for URLs."""
    if is_remote(location):
        return str(location).rstrip("/") + "/" + relative.lstrip("/")
    return os.path.join(str(location), relative)  # called per frame: no Path objects


def absolute(location: str | Path) -> str:
    """Local paths made absolute (`~` expanded); URLs unchanged."""
    if is_remote(location):
        return str(location)
    return os.path.abspath(os.path.expanduser(str(location)))


def _split(url: str) -> tuple[str, str]:
    """(protocol, path without protocol): `s3://b/k` -> (`s3`, `b/k`)."""
    protocol, _, path = str(url).partition("://")
    return protocol, path.strip("/")


# --- filesystems: one per process and configuration ---------------------------------------------
_FILESYSTEMS: dict[tuple, Any] = {}
_FILESYSTEMS_PID = os.getpid()
_FILESYSTEMS_LOCK = threading.Lock()


def _forget_filesystems() -> None:
    """After fork: an s3fs instance holds the parent's event loop and connections (not fork-safe)."""
    global _FILESYSTEMS_LOCK, _FILESYSTEMS_PID
    _FILESYSTEMS.clear()
    _FILESYSTEMS_PID = os.getpid()
    _FILESYSTEMS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_filesystems)


def _filesystem(protocol: str):
    """The fsspec filesystem for `protocol`, created once per process and configuration.

    `skip_instance_cache` keeps fsspec from handing back an instance made under other settings;
    `use_listings_cache=False` makes every listing current (a fingerprint must see a changed
    object; listings are done at planning time, not per sample).
    """
    import fsspec

    if os.getpid() != _FILESYSTEMS_PID:  # forked without the hook (defensive)
        _forget_filesystems()
    key = (protocol, tuple(os.environ.get(name) for name in _CONFIG_ENV))
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, use_listings_cache=False)
            _FILESYSTEMS[key] = fs
        return fs


def endpoint() -> str:
    """The S3 endpoint the environment selects (what error messages and the cache key name)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


# --- errors ------------------------------------------------------------------------------------
def _error_code(err: BaseException) -> str | None:
    """The S3 error code (`NoSuchBucket`, `NoSuchKey`, ...) behind an s3fs exception, if any."""
    seen = err
    for _ in range(5):
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            return None
    return None


def _bucket_missing(url: str, err: BaseException) -> bool:
    """Whether a not-found error means the bucket itself is absent (one extra request if unsure)."""
    code = _error_code(err)
    if code in ("NoSuchBucket", "NoSuchKey"):
        return code == "NoSuchBucket"
    protocol, path = _split(url)
    bucket = path.split("/", 1)[0]
    try:
        _filesystem(protocol).info(bucket)
    except FileNotFoundError:
        return True
    except Exception:  # no permission to look at the bucket: do not claim it is missing
        return False
    return False


def _where() -> str:
    return endpoint() or "the default AWS endpoint"


@contextlib.contextmanager
def _remote(url: str) -> Iterator[None]:
    """Turn backend exceptions of one remote operation into a StorageError naming URL and fix."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as err:
        if _bucket_missing(url, err):
            bucket = _split(url)[1].split("/", 1)[0]
            raise StorageError(
                f"{url}: bucket {bucket!r} does not exist or is not reachable at endpoint {_where()}. "
                "Fix: check the bucket name, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and the credentials"
            ) from None
        raise ObjectNotFound(f"no object at {url}. Fix: check the path (keys are case-sensitive)") from None
    except PermissionError as err:
        raise StorageError(
            f"{url}: access denied at endpoint {_where()} ({err}). "
            "Fix: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket policy"
        ) from None
    except Exception as err:
        if not _is_backend_error(err):
            raise
        raise StorageError(
            f"{url}: cannot read at endpoint {_where()} ({type(err).__name__}: {err}). "
            "Fix: check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, the network and the credentials"
        ) from None


def _is_backend_error(err: BaseException) -> bool:
    """Connection, credential and protocol errors of the object-store client libraries.

    s3fs raises some of them as a plain OSError whose cause is the botocore error, so the
    chain is followed; a local disk error (no such cause) is left alone.
    """
    seen: BaseException | None = err
    for _ in range(5):
        if seen is None:
            return False
        module = type(seen).__module__ or ""
        if module.split(".")[0] in _BACKEND_MODULES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- listing -----------------------------------------------------------------------------------
def list_names(folder: str | Path) -> list[str]:
    """Names of the files directly inside `folder` (FileNotFoundError naming it when absent)."""
    if not is_remote(folder):
        with os.scandir(folder) as entries:
            return [e.name for e in entries if e.is_file()]
    return [relative for relative, _, _ in list_files(str(folder), recursive=False)]


def list_files(location: str | Path, recursive: bool = True) -> list[tuple[str, int, str]]:
    """(relative path with `/`, size, version tag) of the files under `location`, sorted.

    The version tag changes when a file changes: the ETag for S3 (no download needed), the
    mtime in ns for local files. A `location` that is itself a file gives one entry (its name).
    FileNotFoundError (for URLs: ObjectNotFound) naming `location` when nothing is there.
    """
    if not is_remote(location):
        return _list_local(Path(location), recursive)
    url = str(location)
    protocol, path = _split(url)
    fs = _filesystem(protocol)
    with _remote(url):
        if recursive:
            infos = list(fs.find(path, detail=True, withdirs=False).values())
        else:
            infos = [i for i in fs.ls(path, detail=True) if i.get("type") == "file"]
    entries = [_remote_entry(path, info) for info in infos if not info["name"].endswith("/")]
    if not entries:
        raise ObjectNotFound(f"no object at or under {url}. Fix: check the path (keys are case-sensitive)")
    return sorted(entries)


def _remote_entry(root: str, info: dict) -> tuple[str, int, str]:
    name = info["name"].strip("/")
    relative = name[len(root) + 1 :] if name != root else posixpath.basename(name)
    tag = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "").strip('"')
    return relative, int(info.get("size") or 0), tag


def _list_local(root: Path, recursive: bool) -> list[tuple[str, int, str]]:
    if root.is_file():
        stat = root.stat()
        return [(root.name, stat.st_size, str(stat.st_mtime_ns))]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or folder: {root}")
    entries = []
    walker = os.walk(root) if recursive else [(str(root), [], [e.name for e in os.scandir(root)])]
    for dirpath, _, filenames in walker:
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            stat = path.stat()
            entries.append((path.relative_to(root).as_posix(), stat.st_size, str(stat.st_mtime_ns)))
    return sorted(entries)


def exists(location: str | Path) -> bool:
    if not is_remote(location):
        return Path(location).exists()
    protocol, path = _split(str(location))
    with _remote(str(location)):
        return _filesystem(protocol).exists(path)


def isdir(location: str | Path) -> bool:
    """Local folders; for URLs, a prefix with at least one object under it."""
    if not is_remote(location):
        return Path(location).is_dir()
    protocol, path = _split(str(location))
    with _remote(str(location)):
        return _filesystem(protocol).isdir(path)


# --- the read-through cache --------------------------------------------------------------------
def cache_dir() -> Path:
    """`$STREAMVLN_DATA_CACHE`, else `<streamvln cache root>/remote` (one cache per machine)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    from streamvln_model.model.tokenizer import cache_root

    return cache_root() / "remote"


def cache_entry(url: str) -> Path:
    """Where `url` lives in the cache: one entry per endpoint and URL.

    The endpoint is part of the key because the same bucket name at two endpoints (a test
    server, another cloud) holds different objects. The object's name stays at the end of the
    file name so decoders that look at the suffix (video, image) still work. Beside the entry,
    `<entry>.version` records the version tag (ETag) of the bytes it holds, when known.
    """
    digest = hashlib.sha256(f"{endpoint()}\0{url}".encode()).hexdigest()
    name = posixpath.basename(_split(url)[1]) or "object"
    return cache_dir() / digest[:2] / f"{digest[2:]}-{name[-_NAME_LIMIT:]}"


def _version_file(target: Path) -> Path:
    return target.with_name(target.name + ".version")


def _holds(target: Path, version: str | None) -> bool:
    """The entry exists and, when a version is asked for, holds that version."""
    if not target.is_file():
        return False
    if version is None:
        return True
    try:
        return _version_file(target).read_text() == version
    except FileNotFoundError:
        return False


def local_path(location: str | Path, *, version: str | None = None) -> Path:
    """A local file with the content of `location`.

    Local paths are returned as they are. A URL is fetched once into the cache and afterwards
    served from it with no request at all. With `version` (a tag from `list_files`), an entry
    holding another version is fetched again and replaced: the data stage reads every file at
    its current version, so the entry a training worker on the same machine opens later
    (without a version) holds exactly the bytes that were checked and indexed.
    """
    if not is_remote(location):
        return Path(location)
    url = str(location)
    target = cache_entry(url)
    if _holds(target, version):
        return target
    return _fetch(url, target, version)


def _fetch(url: str, target: Path, version: str | None) -> Path:
    """Download `url` to `target` once: other processes wait on a lock, then see the whole file.

    The download goes to a temporary file in the same folder and is renamed into place, so a
    reader that checks `target` without the lock never sees half a file.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(target.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _holds(target, version):  # else another process fetched it while we waited
                _download(url, target)
                if version is not None:
                    write_text_atomically(_version_file(target), version)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        _version_file(target).unlink()
        finally:
            # A process still waiting on this (now unlinked) lock re-checks `target` first; at
            # worst two processes download the same object, each renaming a whole file.
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
    return target


def _download(url: str, target: Path) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
    os.close(handle)
    try:
        protocol, path = _split(url)
        with _remote(url):
            _filesystem(protocol).get_file(path, temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; a shared cache is read by every user
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def read_bytes(location: str | Path, *, version: str | None = None) -> bytes:
    return local_path(location, version=version).read_bytes()


def read_text(location: str | Path, *, version: str | None = None) -> str:
    return read_bytes(location, version=version).decode("utf-8")


def read_current(location: str | Path) -> bytes:
    """The bytes of `location` as they are now: for a remote file, the cached copy of its current
    version (one listing request), so a file replaced at the same URL is never read stale.

    For annotation files, the mixture YAML and the files it names, which the data stage reads
    once per plan; media files are versioned by the media check instead.
    """
    if not is_remote(location):
        return read_bytes(location)
    (entry,) = list_files(location, recursive=False)
    return read_bytes(location, version=entry[2])


# --- whole folders (the data index) ------------------------------------------------------------
def mirror(location: str | Path) -> Path:
    """A local folder with the files under `location`: a remote prefix is copied once per machine
    (each file through the read-through cache's lock and rename), a local folder returned as is.

    For folders whose files must sit side by side, such as a data index that workers
    memory-map. Files already mirrored at their listed version are not fetched again.
    """
    if not is_remote(location):
        return Path(location)
    url = str(location).rstrip("/")
    folder = cache_dir() / "mirrors" / hashlib.sha256(f"{endpoint()}\0{url}".encode()).hexdigest()[:32]
    for relative, _, tag in list_files(url):
        target = folder / relative
        if not _holds(target, tag):
            _fetch(join(url, relative), target, tag)
    return folder


def upload_folder(local: Path, location: str, last: str | None = None) -> None:
    """Copy every file under `local` to the `location` prefix; the file named `last` goes last,
    so a reader that finds it finds everything else already in place."""
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)
    protocol, root = _split(str(location).rstrip("/"))
    fs = _filesystem(protocol)
    with _remote(str(location)):
        for path in files:
            fs.put_file(str(path), f"{root}/{path.relative_to(local).as_posix()}")
