"""The checked data index: content key, mount independence, frame order, trims, quarantine.

Runs the library's data check on real files (synthetic trajectories written per test): the
key must follow the content (one frame's bytes, one annotation) and nothing else (the mount
point); frames must be read in step order whatever their names; `--remove_init_turns` must
drop exactly the leading turns of instructions that never mention turning; and
`--max_invalid_fraction` must quarantine by name, never substitute.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from streamvln_model.config.sample_shape import SampleShape
from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.index.folder import index_folder, open_index, write_index
from streamvln_model.data.index.tables import build_index, leading_turns
from streamvln_model.data.validation.check import DataSettings, check_data
from streamvln_model.data.validation.errors import DataValidationError
from tests.helpers import copy_dataset, read_annotations, write_annotations


def settings(video_folder: Path | str, **fields) -> DataSettings:
    return DataSettings(video_folder=str(video_folder), shape=SampleShape(32, 8, 4), **fields)


def check(video_folder, tmp_path: Path, **fields):
    return check_data(
        settings(video_folder, **fields), check_cache=tmp_path / "checks.sqlite", workers=1, progress=False
    )


@pytest.fixture
def data(synthetic_data, tmp_path) -> Path:
    return copy_dataset(synthetic_data, tmp_path / "data").resolve()


def _first_frame(data: Path) -> Path:
    episode = read_annotations(data)[0]
    return sorted((data / episode["video"] / "rgb").iterdir())[0]


def test_key_follows_one_frame_and_one_annotation(data, tmp_path):
    base = check(data, tmp_path).key
    assert check(data, tmp_path).key == base  # deterministic, and answered from the check cache

    frame = _first_frame(data)
    original = frame.read_bytes()
    with Image.open(frame) as image:
        pixels = image.convert("RGB")
    pixels.putpixel((0, 0), (255 - pixels.getpixel((0, 0))[0], 0, 0))
    pixels.save(frame, quality=90)
    changed_frame = check(data, tmp_path).key
    assert changed_frame != base

    frame.write_bytes(original)
    assert check(data, tmp_path).key == base

    episodes = read_annotations(data)
    episodes[0]["instructions"] = ["Walk to the green door and stop."]
    write_annotations(data, episodes)
    assert check(data, tmp_path).key not in (base, changed_frame)


def test_moved_data_reuses_the_index(data, tmp_path):
    first = check(data, tmp_path)
    location, built = write_index(first, index_folder(tmp_path / "indexes", first.key))
    assert built
    target = Path(location)
    stamp = (target / "manifest.json").stat().st_mtime_ns

    moved = tmp_path / "elsewhere" / "mount" / "r2r"
    moved.parent.mkdir(parents=True)
    shutil.move(str(data), str(moved))
    second = check(moved, tmp_path)
    assert second.key == first.key
    again, built = write_index(second, index_folder(tmp_path / "indexes", second.key))
    assert (again, built) == (location, False)
    assert (target / "manifest.json").stat().st_mtime_ns == stamp

    index = open_index(target, settings(moved))
    row = index.navigation.row(0)
    assert index.navigation.roots == [str(moved)]
    assert Path(index.roots[row["root"]]).is_dir()
    tables = b"".join(p.read_bytes() for p in target.rglob("*.arrow"))
    assert tables and str(data).encode() not in tables  # the rows hold no mount point


def test_frames_are_read_in_step_order_whatever_the_padding(tmp_path):
    source = tmp_path / "nav"
    frames = source / "images" / "ep" / "rgb"
    frames.mkdir(parents=True)
    for step in range(14):  # 0.jpg .. 13.jpg: text order would put 10..13 before 2
        Image.new("RGB", (8, 8), (step * 10, 0, 0)).save(frames / f"{step}.jpg")
    actions = [-1, *[1] * 13]
    (source / "annotations.json").write_text(
        json.dumps([{"id": 0, "video": "images/ep", "instructions": ["go"], "actions": actions}])
    )
    scan = load_episodes(str(source))
    assert scan.folders[0]["frames"] == [f"{s}.jpg" for s in range(14)]

    (frames / "cover.jpg").write_bytes((frames / "0.jpg").read_bytes())
    with pytest.raises(DataValidationError, match=r"'cover\.jpg' is not named by its step number"):
        load_episodes(str(source))


def test_remove_init_turns_drops_only_unmentioned_leading_turns(tmp_path):
    actions = [-1, 2, 2, 3, 1, 1, 2, 1, 0]
    assert leading_turns(actions, "Walk down the hall and stop at the sofa.") == 3
    assert leading_turns(actions, "Turn around, then walk down the hall.") == 0
    assert leading_turns([-1, 1, 2, 2], "Walk down the hall.") == 0  # no leading turn

    source = tmp_path / "nav"
    frames = source / "images" / "ep" / "rgb"
    frames.mkdir(parents=True)
    for step in range(len(actions)):
        Image.new("RGB", (8, 8), (step * 20, 0, 0)).save(frames / f"{step:03d}.jpg")
    instructions = ["Walk down the hall and stop at the sofa.", "Turn left twice, then walk."]
    (source / "annotations.json").write_text(
        json.dumps([{"id": 0, "video": "images/ep", "instructions": instructions, "actions": actions}])
    )
    index, _ = build_index(load_episodes(str(source)), 32, 8, 4, remove_init_turns=True)
    trimmed, kept = index.row(0), index.row(1)
    assert trimmed["actions"] == [-1, 1, 1, 2, 1, 0] and trimmed["frames"][0] == "003.jpg"
    assert kept["actions"] == actions and kept["frames"][0] == "000.jpg"


def test_invalid_fraction_quarantines_by_name_or_fails(data, tmp_path):
    episodes = read_annotations(data)
    bad = episodes[3]
    sorted((data / bad["video"] / "rgb").iterdir())[2].write_bytes(b"")  # a zero-byte frame
    with pytest.raises(DataValidationError) as refused:
        check(data, tmp_path)
    assert "zero-byte" in str(refused.value) or "empty" in str(refused.value)
    assert refused.value.report["status"] == "failed"

    allowed = check(data, tmp_path, max_invalid_fraction=0.25)
    assert allowed.quarantined == {f"video_folder[0]:{bad['id']}"}
    assert allowed.report.quarantined == [f"video_folder[0]:{bad['id']}"]
    assert allowed.report.status == "passed with quarantine"
    index, _ = build_index(allowed.navigation, 32, 8, 4)
    assert str(bad["id"]) not in {row["episode_id"] for row in index}

    with pytest.raises(DataValidationError, match="above the allowed"):
        check(data, tmp_path, max_invalid_fraction=1 / (2 * len(episodes)))
