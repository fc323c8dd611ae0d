"""The media checker decodes real files: bad ones are named with a reason, good ones get a digest.

Everything here writes real images and videos (Pillow, PyAV) into a temporary folder; nothing
about decoding, hashing or the sqlite cache is mocked.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from streamvln_model.data.validation.media_checks import IMAGE, VIDEO, MediaResult, check_media
from streamvln_model.data.validation.records import Problem

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- real media ---------------------------------------------------------------------------------
def _pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A noisy gradient: compresses like a camera frame, not like a flat colour."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 200, height), np.linspace(0, 55, width))
    rgb = np.stack([ramp, ramp[::-1], ramp[:, ::-1]], axis=-1) + rng.integers(0, 40, (height, width, 3))
    return rgb.clip(0, 255).astype(np.uint8)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _jpeg(width: int = 64, height: int = 48, seed: int = 0, **options) -> bytes:
    return _encoded(Image.fromarray(_pixels(width, height, seed)), "JPEG", quality=90, **options)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _check(*locations: str, kind: str = IMAGE, **options) -> list[MediaResult]:
    return check_media([(location, kind) for location in locations], cache_path=None, workers=1, **options)


def _blake2b(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --- images -------------------------------------------------------------------------------------
def test_good_images_decode_with_size_mode_and_the_digest_of_their_bytes(tmp_path):
    rgb = Image.fromarray(_pixels(40, 30))
    files = {
        "rgb.jpg": (_encoded(rgb, "JPEG"), "RGB"),
        "rgb.png": (_encoded(rgb, "PNG"), "RGB"),
        # Not RGB, but training converts them: a mode is recorded, never a problem.
        "gray.jpg": (_encoded(rgb.convert("L"), "JPEG"), "L"),
        "cmyk.jpg": (_encoded(rgb.convert("CMYK"), "JPEG"), "CMYK"),
        "rgba.png": (_encoded(rgb.convert("RGBA"), "PNG"), "RGBA"),
        "palette.png": (_encoded(rgb.convert("P"), "PNG"), "P"),
    }
    locations = [_write(tmp_path / name, data) for name, (data, _) in files.items()]
    for result, (name, (data, mode)) in zip(_check(*locations), files.items(), strict=True):
        assert result.problem is None, (name, result.problem)
        assert result.kind == IMAGE
        assert result.info == {"width": 40, "height": 30, "mode": mode}, name
        assert result.digest == _blake2b(data)
        assert result.to_problem() is None


def test_broken_images_get_a_reason_with_the_fix(tmp_path):
    whole = _jpeg(320, 240)
    empty = _write(tmp_path / "empty.jpg", b"")
    truncated = _write(tmp_path / "truncated.jpg", whole[: len(whole) // 2])
    text = _write(tmp_path / "notes.jpg", b"frame 7 was dropped by the recorder\n")
    missing = str(tmp_path / "missing.jpg")
    results = _check(empty, truncated, text, missing)
    problems = [result.problem for result in results]

    assert problems[0].startswith("empty file (0 bytes)")
    assert problems[1].startswith("truncated JPEG (image file is truncated")
    assert problems[2].startswith("not an image Pillow can read (the file starts with b'frame 7")
    assert problems[3].startswith("missing")
    assert all("remove" in problem or "restore" in problem for problem in problems)  # each says the fix
    # Unreadable content has no digest; content that was read does (it still enters the key).
    assert [result.digest is None for result in results] == [False, False, False, True]
    assert results[1].to_problem("episode 3") == Problem(truncated, IMAGE, problems[1], "episode 3")


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_cut_anywhere_is_caught_by_the_reduced_scale_decode(tmp_path, progressive):
    """The 1/8-scale JPEG decode must catch every truncation a full decode catches."""
    whole = _jpeg(160, 120, progressive=progressive)
    cuts = [*range(200, len(whole), len(whole) // 40), len(whole) - 2, len(whole) - 1]
    locations = [_write(tmp_path / f"cut{cut}.jpg", whole[:cut]) for cut in cuts]
    for cut, result in zip(cuts, _check(*locations), strict=True):
        assert result.problem is not None, f"a JPEG cut to {cut} of {len(whole)} bytes passed"
        with pytest.raises(OSError), Image.open(io.BytesIO(whole[:cut])) as image:
            image.load()  # ... and a full decode agrees
    assert _check(_write(tmp_path / "whole.jpg", whole))[0].problem is None


def test_digest_follows_the_bytes_not_the_path(tmp_path):
    original = _write(tmp_path / "a.jpg", _jpeg())
    copy = str(tmp_path / "elsewhere" / "b.jpg")
    Path(copy).parent.mkdir()
    shutil.copyfile(original, copy)
    changed = bytearray(Path(original).read_bytes())
    changed[len(changed) // 2] ^= 0x01
    edited = _write(tmp_path / "c.jpg", bytes(changed))

    first, same, other = _check(original, copy, edited)
    assert first.digest == same.digest
    assert first.digest != other.digest


def test_results_follow_the_input_order_and_a_repeated_file_is_one_result(tmp_path):
    good = _write(tmp_path / "good.png", _encoded(Image.fromarray(_pixels(8, 8)), "PNG"))
    bad = _write(tmp_path / "bad.jpg", b"")
    results = _check(bad, good, bad, good)
    assert [result.location for result in results] == [bad, good, bad, good]
    assert results[0] == results[2] and results[1] == results[3]
    with pytest.raises(ValueError, match="listed both as 'image' and as 'video'"):
        check_media([(good, IMAGE), (good, VIDEO)], cache_path=None, workers=1)
    with pytest.raises(ValueError, match="media kind 'audio'"):
        check_media([(good, "audio")], cache_path=None, workers=1)


def test_a_process_that_loads_truncated_images_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ValueError, match="LOAD_TRUNCATED_IMAGES"):
        _check(_write(tmp_path / "a.jpg", _jpeg()))


# --- videos -------------------------------------------------------------------------------------
def _mp4(path: Path, frames: int = 12, fps: int = 6) -> str:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(_pixels(32, 32, seed=index), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def test_videos_and_frame_folders_are_decoded(tmp_path):
    video = _mp4(tmp_path / "clip.mp4")
    whole = Path(video).read_bytes()
    truncated = _write(tmp_path / "cut.mp4", whole[: len(whole) // 2])
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(4):
        _write(folder / f"{index}.jpg", _jpeg(seed=index))
    broken = tmp_path / "broken_frames"
    shutil.copytree(folder, broken)
    _write(broken / "2.jpg", _jpeg(seed=2)[:1000])

    results = _check(video, truncated, str(folder), str(broken), kind=VIDEO)
    assert results[0].problem is None
    assert results[0].info == {"frames": 12, "fps": 6.0, "duration": 2.0}
    assert results[0].digest == _blake2b(whole)
    assert results[1].problem is not None and "Fix" in results[1].problem
    assert str(tmp_path) not in results[1].problem  # the file is the result's location, not repeated
    assert results[2].problem is None
    assert results[2].info == {"frames": 4, "fps": 2.0, "duration": 2.0}
    assert results[3].problem.startswith("frame 2.jpg: truncated JPEG")
    assert results[2].digest != results[3].digest


# --- the cache ----------------------------------------------------------------------------------
def _frames(folder: Path, count: int) -> list[str]:
    folder.mkdir()
    data = _jpeg(32, 24)
    return [_write(folder / f"{index}.jpg", data) for index in range(count)]


def _overwrite_keeping_size_and_mtime(location: str) -> None:
    """New content the cache cannot notice: only reading the file would reveal it."""
    stat = os.stat(location)
    Path(location).write_bytes(b"\0" * stat.st_size)
    os.utime(location, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_recheck_of_unchanged_files_reads_none_and_a_changed_file_is_checked_again(tmp_path, capfd):
    locations = _frames(tmp_path / "frames", 600)
    cache = tmp_path / "media.sqlite"
    items = [(location, IMAGE) for location in locations]
    first = check_media(items, cache_path=cache, workers=1, progress=True)
    assert all(result.problem is None for result in first)
    assert "file/s" in capfd.readouterr().err  # the progress bar, with its rate

    for location in locations:
        _overwrite_keeping_size_and_mtime(location)
    assert check_media(items, cache_path=cache, workers=1, progress=True) == first  # nothing read
    assert "file/s" not in capfd.readouterr().err  # nothing to check: no bar

    touched = locations[7]
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))
    again = check_media(items, cache_path=cache, workers=1)
    assert again[7].problem.startswith("not an image")
    assert again[:7] + again[8:] == first[:7] + first[8:]
    with sqlite3.connect(cache) as connection:  # one row per file, the old version replaced
        (rows,) = connection.execute("SELECT count(*) FROM media_checks_v1").fetchone()
    assert rows == len(locations)


def test_one_worker_and_two_give_the_same_results(tmp_path):
    locations = _frames(tmp_path / "frames", 40)
    locations[3] = _write(tmp_path / "frames" / "3.jpg", b"")
    locations[21] = _write(tmp_path / "frames" / "21.jpg", _jpeg()[:500])
    locations.append(str(tmp_path / "missing.jpg"))
    items = [(location, IMAGE) for location in locations]
    serial = check_media(items, cache_path=None, workers=1)
    parallel = check_media(items, cache_path=tmp_path / "media.sqlite", workers=2)
    cached = check_media(items, cache_path=tmp_path / "media.sqlite", workers=2)
    assert serial == parallel == cached
    assert [i for i, result in enumerate(serial) if result.problem] == [3, 21, 40]


def test_concurrent_checks_share_one_cache(tmp_path):
    """Two checks writing one cache at once wait for each other instead of failing as locked."""
    locations = _frames(tmp_path / "frames", 600)
    halves = [locations[:400], locations[200:]]  # overlapping: both write the middle rows
    cache = tmp_path / "media.sqlite"

    def run(part: list[str]) -> list[MediaResult]:
        return check_media([(location, IMAGE) for location in part], cache_path=cache, workers=1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(run, halves)
    assert all(result.problem is None for result in first + second)
    with sqlite3.connect(cache) as connection:
        (rows,) = connection.execute("SELECT count(*) FROM media_checks_v1").fetchone()
    assert rows == len(locations)


_INTERRUPTED_CHECK = """
import sys
from pathlib import Path
from streamvln_model.data.validation.media_checks import check_media
locations = Path(sys.argv[1]).read_text().split()
check_media([(l, "image") for l in locations], cache_path=Path(sys.argv[2]), workers=2, progress=False)
"""


@pytest.mark.processes  # the interrupted check is a subprocess
def test_an_interrupted_check_resumes_where_it_stopped(tmp_path):
    locations = _frames(tmp_path / "frames", 2000)
    listing = _write(tmp_path / "listing.txt", "\n".join(locations).encode())
    cache = tmp_path / "media.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_CHECK, listing, str(cache)], cwd=REPO_ROOT, stderr=subprocess.PIPE
    )
    committed = _wait_for_rows(cache, child)
    child.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = child.communicate(timeout=60)
    assert child.returncode != 0 and b"KeyboardInterrupt" in stderr, stderr.decode()[-2000:]

    with sqlite3.connect(cache) as connection:
        (kept,) = connection.execute("SELECT count(*) FROM media_checks_v1").fetchone()
    assert committed <= kept < len(locations)
    # Files the first run finished are answered from the cache (their new content is never
    # read); the others are checked now and show their new, undecodable content.
    for location in locations:
        _overwrite_keeping_size_and_mtime(location)
    results = check_media([(location, IMAGE) for location in locations], cache_path=cache, workers=1)
    assert sum(result.problem is None for result in results) == kept


def _wait_for_rows(cache: Path, child: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """Rows committed once the first batch lands (the child must still be running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert child.poll() is None, "the check finished before it could be interrupted"
        if cache.exists():
            try:
                with sqlite3.connect(cache, timeout=5) as connection:
                    (rows,) = connection.execute("SELECT count(*) FROM media_checks_v1").fetchone()
            except sqlite3.OperationalError:  # the table is not created yet
                rows = 0
            if rows:
                return rows
        time.sleep(0.005)
    raise AssertionError("no results were committed within a minute")


# --- object storage -----------------------------------------------------------------------------
def test_s3_objects_are_checked_and_a_new_etag_is_checked_again(moto_s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAMVLN_DATA_CACHE", str(tmp_path / "read-through"))
    fs = moto_s3.fs()
    bucket = f"media-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    good, cut = _jpeg(seed=1), _jpeg(seed=2)
    fs.pipe(f"{bucket}/ep/0.jpg", good)
    fs.pipe(f"{bucket}/ep/1.jpg", cut[: len(cut) // 2])
    fs.invalidate_cache()
    urls = [f"s3://{bucket}/ep/0.jpg", f"s3://{bucket}/ep/1.jpg", f"s3://{bucket}/ep/2.jpg"]
    items = [(url, IMAGE) for url in urls]
    cache = tmp_path / "media.sqlite"

    first = check_media(items, cache_path=cache, workers=2)
    assert first[0].problem is None and first[0].digest == _blake2b(good)
    assert first[1].problem.startswith("truncated JPEG")
    assert first[2].problem.startswith("missing")
    assert check_media(items, cache_path=cache, workers=1) == first

    fs.pipe(f"{bucket}/ep/1.jpg", cut)  # repaired: a new ETag
    fs.invalidate_cache()
    repaired = check_media(items, cache_path=cache, workers=1)[1]
    assert repaired.problem is None and repaired.digest == _blake2b(cut)
