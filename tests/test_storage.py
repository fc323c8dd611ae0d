"""Object storage through `streamvln_model.data.locations` against a real moto S3 server.

The product reads credentials and the endpoint from the environment only, so every test sets
them with monkeypatch.setenv. Requests are counted at the server (tests/s3_requests.py), which
also sees those of subprocesses.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess
import sys
import traceback
import uuid
from pathlib import Path

import pytest

from streamvln_model.data import locations as storage
from streamvln_model.fingerprint import fingerprint
from tests.s3_requests import count_requests
from tests.services import free_port

TREE = {
    "annotations.json": b'[{"id": 1, "video": "ep1"}]',
    "ep1/rgb/0.jpg": b"frame-0",
    "ep1/rgb/1.jpg": b"frame-1!",
    "ep1/rgb/10.jpg": b"frame-10",
    "ep2/rgb/0.jpg": b"other-0",
    "notes.txt": "navigation données\n".encode(),
}


@pytest.fixture
def s3_env(moto_s3, monkeypatch, tmp_path) -> Path:
    """Credentials and endpoint in the environment (as a job would set them); a private cache."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(storage.CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def trees(moto_s3, s3_env, tmp_path) -> tuple[Path, str]:
    """The same small trajectory tree on disk and under `s3://<fresh bucket>/data`."""
    local = tmp_path / "local"
    bucket = f"storage-{uuid.uuid4().hex[:12]}"
    fs = moto_s3.fs()
    fs.mkdir(bucket)
    for relative, content in TREE.items():
        (local / relative).parent.mkdir(parents=True, exist_ok=True)
        (local / relative).write_bytes(content)
        fs.pipe(f"{bucket}/data/{relative}", content)
    fs.invalidate_cache()
    return local, f"s3://{bucket}/data"


def _put(moto_s3, url: str, content: bytes) -> None:
    fs = moto_s3.fs()
    fs.pipe(url.removeprefix("s3://"), content)
    fs.invalidate_cache()


def test_s3_reads_lists_and_joins_like_local(trees) -> None:
    local, url = trees
    results = []
    for root in (str(local), url):
        frames = storage.join(storage.join(root, "ep1"), "rgb")
        files = storage.list_files(root)
        results.append(
            {
                "names": sorted(storage.list_names(frames)),
                "top": sorted(storage.list_names(root)),
                "files": [(relative, size) for relative, size, _ in files],
                "shallow": [(r, s) for r, s, _ in storage.list_files(root, recursive=False)],
                "one_file": [
                    [
                        (r, s)
                        for r, s, _ in storage.list_files(storage.join(root, "notes.txt"), recursive=deep)
                    ]
                    for deep in (True, False)
                ],
                "bytes": storage.read_bytes(storage.join(frames, "10.jpg")),
                "text": storage.read_text(storage.join(root, "notes.txt")),
                "exists": [storage.exists(storage.join(root, p)) for p in ("notes.txt", "ep1", "nope")],
                "isdir": [storage.isdir(storage.join(root, p)) for p in ("notes.txt", "ep1", "nope")],
            }
        )
        assert all(tag for _, _, tag in files), "every file needs a version tag"
    assert results[0] == results[1]
    assert results[0]["names"] == ["0.jpg", "1.jpg", "10.jpg"]
    assert results[0]["text"] == "navigation données\n"
    assert results[0]["exists"] == [True, True, False]
    assert results[0]["isdir"] == [False, True, False]
    assert results[0]["one_file"] == [[("notes.txt", len(TREE["notes.txt"]))]] * 2
    assert storage.join(url, "/ep1/rgb") == url + "/ep1/rgb"

    missing = storage.join(url, "ep9/rgb")
    with pytest.raises(FileNotFoundError, match=missing):
        storage.list_names(missing)
    with pytest.raises(FileNotFoundError):
        storage.list_names(storage.join(str(local), "ep9/rgb"))


def test_second_read_makes_no_request(trees, moto_s3) -> None:
    _, url = trees
    frame = storage.join(url, "ep1/rgb/1.jpg")
    with count_requests(moto_s3.endpoint_url) as first:
        path = storage.local_path(frame)
    assert first["GET object"] == 1
    assert path.read_bytes() == TREE["ep1/rgb/1.jpg"]
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temp or lock file left"

    with count_requests(moto_s3.endpoint_url) as second:
        assert storage.local_path(frame) == path
        assert storage.read_bytes(frame) == TREE["ep1/rgb/1.jpg"]
    assert sum(second.values()) == 0, second


def test_fresh_process_with_same_cache_makes_no_request(trees, moto_s3) -> None:
    _, url = trees
    frame = storage.join(url, "ep2/rgb/0.jpg")
    storage.read_bytes(frame)
    script = "import sys; from streamvln_model.data import locations; print(locations.read_text(sys.argv[1]))"
    with count_requests(moto_s3.endpoint_url) as counts:
        out = subprocess.run(
            [sys.executable, "-c", script, frame], capture_output=True, text=True, timeout=60, check=True
        )
    assert out.stdout.strip() == TREE["ep2/rgb/0.jpg"].decode()
    assert sum(counts.values()) == 0, counts


def _fetch_digest(url: str, barrier, results) -> None:
    barrier.wait(timeout=30)
    results.put(hashlib.sha256(storage.local_path(url).read_bytes()).hexdigest())


def test_concurrent_fetch_from_forked_processes_gives_one_intact_file(trees, moto_s3) -> None:
    _, url = trees
    big = storage.join(url, "video.mp4")
    content = uuid.uuid4().bytes * (4 * 1024 * 1024 // 16)  # 4 MiB
    _put(moto_s3, big, content)
    storage.list_names(url)  # the parent holds a filesystem before forking (dataloader workers)

    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    with count_requests(moto_s3.endpoint_url) as counts:
        workers = [context.Process(target=_fetch_digest, args=(big, barrier, results)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    expected = hashlib.sha256(content).hexdigest()
    assert [results.get(timeout=5), results.get(timeout=5)] == [expected, expected]
    assert counts["GET object"] == 1, "the second process waits for the first instead of downloading"
    entry = storage.cache_entry(big)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]


def _message(err: pytest.ExceptionInfo) -> str:
    return "".join(traceback.format_exception(err.value))


def test_missing_bucket_and_key_raise_storage_error_naming_the_url(trees, moto_s3) -> None:
    _, url = trees
    no_bucket = f"s3://missing-{uuid.uuid4().hex[:12]}/data/annotations.json"
    for call in (storage.read_bytes, storage.list_names, storage.list_files):
        with pytest.raises(storage.StorageError) as err:
            call(no_bucket)
        assert no_bucket in str(err.value)
        assert "does not exist" in str(err.value) and moto_s3.endpoint_url in str(err.value)
        assert "AWS_ENDPOINT_URL" in str(err.value)
        assert not isinstance(err.value, FileNotFoundError), "a missing bucket is a setup error"
        assert "botocore" not in _message(err)

    no_key = storage.join(url, "ep1/rgb/99.jpg")
    with pytest.raises(storage.StorageError, match="no object at") as err:
        storage.read_bytes(no_key)
    assert no_key in str(err.value)
    assert isinstance(err.value, FileNotFoundError), "readers treat it like a missing local file"
    assert "botocore" not in _message(err)
    assert not storage.cache_entry(no_key).exists()


def test_unreachable_endpoint_raises_storage_error(trees, monkeypatch) -> None:
    _, url = trees
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # standard botocore setting; keeps the test fast
    frame = storage.join(url, "ep1/rgb/0.jpg")
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(frame)
    assert frame in str(err.value) and dead in str(err.value)
    assert "botocore" not in _message(err)


def test_cached_object_is_immutable_unless_a_version_is_given(trees, moto_s3) -> None:
    _, url = trees
    notes = storage.join(url, "notes.txt")
    assert storage.read_bytes(notes) == TREE["notes.txt"]
    _put(moto_s3, notes, b"edited")
    assert storage.read_bytes(notes) == TREE["notes.txt"], "the URL alone is the cache key"
    (tag,) = [tag for relative, _, tag in storage.list_files(url) if relative == "notes.txt"]
    assert storage.read_bytes(notes, version=tag) == b"edited"


def test_fingerprint_of_a_prefix_follows_its_objects_without_downloading(trees, moto_s3) -> None:
    local, url = trees
    before = fingerprint([url])
    with count_requests(moto_s3.endpoint_url) as counts:
        assert fingerprint([url]) == before
        file_key = fingerprint([storage.join(url, "notes.txt")])
    assert counts["GET object"] == 0 and counts["LIST"] >= 1, counts
    assert file_key != before

    _put(moto_s3, storage.join(url, "ep1/rgb/0.jpg"), b"frame-X")  # same size, new content
    after = fingerprint([url])
    assert after != before
    assert fingerprint([url]) == after
    assert fingerprint([storage.join(url, "notes.txt")]) == file_key, "other objects unchanged"

    missing = storage.join(url, "nothing-here")
    assert fingerprint([missing]) == fingerprint([missing]) != fingerprint([url])
    assert fingerprint([local]) == fingerprint([str(local)]), "local paths keep their key"


def test_data_index_on_s3_is_shared_and_mirrored_once(synthetic_data, moto_s3, s3_env, tmp_path) -> None:
    """An index written to an s3:// prefix (the flow's `index_root`) is complete only once its
    manifest lands, is reused by a second writer of the same key, and opens memory-mapped from
    a per-machine mirror fetched once."""
    from streamvln_model.config.sample_shape import SampleShape
    from streamvln_model.data.index.folder import index_folder, open_index, write_index
    from streamvln_model.data.validation.check import DataSettings, check_data

    bucket = f"index-{uuid.uuid4().hex[:12]}"
    moto_s3.fs().mkdir(bucket)
    settings = DataSettings(str(synthetic_data), SampleShape(32, 8, 4))
    check = check_data(settings, check_cache=tmp_path / "checks.sqlite", workers=1, progress=False)
    location = index_folder(f"s3://{bucket}/indexes", check.key)
    assert write_index(check, location) == (location, True)
    assert write_index(check, location) == (location, False)

    with count_requests(moto_s3.endpoint_url) as first:
        index = open_index(location, settings)
    assert first["GET object"] > 0
    assert len(index.navigation) > 0 and index.roots == [str(synthetic_data)]
    with count_requests(moto_s3.endpoint_url) as second:
        again = open_index(location, settings)
    assert second["GET object"] == 0, second
    assert [again.navigation.row(i) for i in range(3)] == [index.navigation.row(i) for i in range(3)]
