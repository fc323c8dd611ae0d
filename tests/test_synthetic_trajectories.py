"""Synthetic episodes: the published layout, determinism, and labels readable from pixels alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamvln_model.synthetic import (
    ACTION_COLOURS,
    TrajectorySummary,
    decode_frame,
    render_frame,
    targets_from_actions,
    upcoming_targets,
    write_trajectories,
)

EPISODES = 12
K = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrajectorySummary, list[dict]]:
    """One shared dataset (~700 small frames, well under a second) for the read-only checks."""
    out = tmp_path_factory.mktemp("synthetic") / "r2r_synth"
    summary = write_trajectories(out, EPISODES, seed=3, num_future_steps=K)
    annotations = json.loads((out / "annotations.json").read_text())
    return out, summary, annotations


def _annotations(path: Path) -> list[dict]:
    return json.loads((path / "annotations.json").read_text())


def test_layout_matches_published_format(dataset) -> None:
    out, summary, annotations = dataset
    assert [episode["id"] for episode in annotations] == list(range(EPISODES))
    assert summary.episodes == EPISODES
    for episode in annotations:
        assert set(episode) == {"id", "video", "instructions", "actions"}
        assert episode["video"] == f"images/synth_{episode['id']:06d}"
        assert episode["actions"][0] == -1
        frames = sorted(p.name for p in (out / episode["video"] / "rgb").iterdir())
        assert frames == [f"{index:03d}.jpg" for index in range(len(episode["actions"]))]
    assert summary.frames == sum(len(episode["actions"]) for episode in annotations)
    assert summary.lengths == [len(episode["actions"]) for episode in annotations]
    with Image.open(out / annotations[0]["video"] / "rgb" / "000.jpg") as image:
        assert image.format == "JPEG"
        assert image.mode == "RGB"
        assert image.size == (160, 120)


def test_no_temporary_files_left(dataset) -> None:
    out, _, _ = dataset
    assert sorted(p.name for p in out.iterdir()) == ["annotations.json", "images"]


def test_actions_and_instructions(dataset) -> None:
    _, summary, annotations = dataset
    real = [action for episode in annotations for action in episode["actions"][1:]]
    assert set(real) == {1, 2, 3}
    assert summary.action_histogram == {0: 0, 1: real.count(1), 2: real.count(2), 3: real.count(3)}
    # Roughly uniform: no action is much more frequent than 1/3 (a blind model cannot do well).
    for action in (1, 2, 3):
        assert 0.27 < real.count(action) / len(real) < 0.40
    for episode in annotations:
        assert 20 <= len(episode["actions"]) <= 90
        assert 1 <= len(episode["instructions"]) <= 3
        for text in episode["instructions"]:
            assert isinstance(text, str) and text[0].isupper() and text.endswith(".")
    assert len({len(episode["instructions"]) for episode in annotations}) > 1


def test_lengths_span_more_than_two_chunks(tmp_path: Path) -> None:
    summary = write_trajectories(tmp_path / "long", 6, min_steps=60, max_steps=90, image_size=(16, 8))
    assert all(60 <= length <= 90 for length in summary.lengths)
    assert any(length > 64 for length in summary.lengths)


def test_every_frame_shows_the_upcoming_targets(dataset) -> None:
    out, _, annotations = dataset
    for episode in annotations[:3]:
        targets = targets_from_actions(episode["actions"])
        assert targets[-1] == 0 and len(targets) == len(episode["actions"])
        for step in range(len(targets)):
            with Image.open(out / episode["video"] / "rgb" / f"{step:03d}.jpg") as image:
                assert decode_frame(image, K) == upcoming_targets(targets, step, K)
        # The end of the episode: STOP shown, then grey past the end.
        assert upcoming_targets(targets, len(targets) - 2, K) == [targets[-2], 0, None, None]


def test_render_decode_round_trip_all_colours() -> None:
    rng = np.random.default_rng(0)
    for upcoming in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 0, None, None], [None, None, None, None]):
        assert decode_frame(render_frame(upcoming, (64, 48), rng), 4) == upcoming
    assert set(ACTION_COLOURS) == {0, 1, 2, 3}


def test_frames_are_noisy_not_identical() -> None:
    rng = np.random.default_rng(0)
    first = np.asarray(render_frame([1, 1, 1, 1], (32, 16), rng))
    second = np.asarray(render_frame([1, 1, 1, 1], (32, 16), rng))
    assert not np.array_equal(first, second)
    assert np.abs(first.astype(int) - np.array(ACTION_COLOURS[1])).max() <= 12


def test_deterministic_per_seed(tmp_path: Path) -> None:
    kwargs = {"episodes": 4, "min_steps": 6, "max_steps": 12, "image_size": (16, 8)}
    write_trajectories(tmp_path / "a", seed=7, **kwargs)
    write_trajectories(tmp_path / "b", seed=7, **kwargs)
    write_trajectories(tmp_path / "c", seed=8, **kwargs)
    assert _annotations(tmp_path / "a") == _annotations(tmp_path / "b")
    assert _annotations(tmp_path / "a") != _annotations(tmp_path / "c")
    frame = "images/synth_000001/rgb/002.jpg"
    assert (tmp_path / "a" / frame).read_bytes() == (tmp_path / "b" / frame).read_bytes()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    kwargs = {"episodes": 3, "min_steps": 6, "max_steps": 12, "image_size": (16, 8)}
    write_trajectories(tmp_path, seed=1, **kwargs)
    with pytest.raises(ValueError, match=r"annotations\.json"):
        write_trajectories(tmp_path, seed=2, **kwargs)
    summary = write_trajectories(tmp_path, seed=2, overwrite=True, **{**kwargs, "episodes": 2})
    annotations = _annotations(tmp_path)
    assert len(annotations) == 2
    # Old episodes and stale frames are gone: exactly one frame per action again.
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["synth_000000", "synth_000001"]
    for episode in annotations:
        assert len(list((tmp_path / episode["video"] / "rgb").iterdir())) == len(episode["actions"])
    assert summary.frames == sum(len(episode["actions"]) for episode in annotations)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"episodes": 0}, "episodes"),
        ({"min_steps": 3}, "min_steps"),
        ({"min_steps": 10, "max_steps": 9}, "max_steps"),
        ({"image_size": (0, 10)}, "image_size"),
        ({"image_size": (10, -1)}, "image_size"),
        ({"image_size": (3, 10)}, "image_size"),
        ({"num_future_steps": 0}, "num_future_steps"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path: Path, kwargs: dict, argument: str) -> None:
    arguments = {"out": tmp_path / "bad", "episodes": 1, **kwargs}
    with pytest.raises(ValueError, match=argument):
        write_trajectories(**arguments)
    assert not (tmp_path / "bad").exists(), "validation must happen before touching the disk"
