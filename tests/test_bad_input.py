"""Bad input fails before torchrun starts, with a message naming the file and the field.

The flow runs for real (`plan_only=False`: it would train if planning passed); each case must
fail in the arguments or data stage, leave no `train.log` (written once torchrun starts) and
run no task after the failed one. Library-level checks cover collecting every problem at once
and never overwriting what is already on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.validation.errors import DataValidationError
from streamvln_model.synthetic import write_trajectories
from streamvln_model.synthetic.checkpoint import write_checkpoint
from tests.helpers import (
    copy_dataset,
    mlflow_tracking_at,
    read_annotations,
    run_failing_flow,
    tiny_request,
    write_annotations,
)


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `folder` -> (size, mtime_ns, first bytes): detects any rewrite."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()[:4096])
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run_failing(
    tmp_path: Path, checkpoint: Path, video_folder: Path, failing_stage: str = "data-module", **settings
):
    """Run the full flow; it must fail in planning. Returns (error message, task states)."""
    request = tiny_request(
        model_name_or_path=str(checkpoint),
        video_folder=str(video_folder),
        output_dir=str(tmp_path / "out"),
        max_steps=1,  # should planning ever pass by mistake, keep the accidental training short
        **settings,
    )
    error, states = run_failing_flow(request, tmp_path / "plans", failing_stage)
    return str(error), states


@pytest.fixture
def data(synthetic_data, tmp_path) -> Path:
    return copy_dataset(synthetic_data, tmp_path / "data").resolve()


@pytest.fixture
def env(prefect_harness, tiny_checkpoint, tmp_path):
    # Only reached if planning wrongly passed: keep MLflow away from the working directory.
    with mlflow_tracking_at(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        yield tiny_checkpoint


# --- through the flow -----------------------------------------------------------------------------
def test_folder_without_annotations(env, data, tmp_path):
    empty = tmp_path / "no_annotations"
    (empty / "images").mkdir(parents=True)
    message, states = _run_failing(tmp_path, env, Path(f"{data},{empty}"))
    assert f"{empty.resolve()}/annotations.json: missing" in message
    assert str(data) not in message  # the good source has no problem
    assert states["data-module"] == ["Failed"]
    assert states["parse-arguments"] == ["Completed"]


def test_frame_count_differs_from_action_count(env, data, tmp_path):
    episode = read_annotations(data)[2]
    frame_dir = data / episode["video"] / "rgb"
    sorted(frame_dir.iterdir())[-1].unlink()
    message, states = _run_failing(tmp_path, env, data)
    assert f"{data}/annotations.json: episode #2 (id={episode['id']})" in message
    assert (
        f"field 'actions': {len(episode['actions'])} entries but {frame_dir} "
        f"holds {len(episode['actions']) - 1} frames"
    ) in message
    assert message.startswith("1 data problem(s)")
    assert states["data-module"] == ["Failed"]


def test_unknown_action_id(env, data, tmp_path):
    episodes = read_annotations(data)
    episodes[1]["actions"][5] = 7
    write_annotations(data, episodes)
    message, states = _run_failing(tmp_path, env, data)
    assert f"{data}/annotations.json: episode #1 (id={episodes[1]['id']}) field 'actions[5]': 7" in message
    assert "is not an action id" in message
    assert states["data-module"] == ["Failed"]


def test_num_history_must_divide_num_frames(env, data, tmp_path):
    message, states = _run_failing(tmp_path, env, data, "parse-arguments", num_history=5, num_frames=32)
    assert "--num_history=5 does not divide --num_frames=32" in message
    assert states == {"parse-arguments": ["Failed"]}  # before the checkpoint or data is read


# --- library level -------------------------------------------------------------------------------
def test_load_episodes_reports_every_problem_at_once(synthetic_data, tmp_path):
    data = copy_dataset(synthetic_data, tmp_path / "data").resolve()
    episodes = read_annotations(data)
    episodes[0]["actions"][3] = 9  # unknown action id
    episodes[1]["instructions"] = []  # no instruction
    del episodes[2]["video"]  # missing field
    episodes[3]["video"] = "images/nowhere"  # frame folder missing
    write_annotations(data, episodes)
    sorted((data / episodes[4]["video"] / "rgb").iterdir())[0].unlink()  # one frame short
    missing = tmp_path / "missing"
    missing.mkdir()

    with pytest.raises(DataValidationError) as caught:
        load_episodes(f"{data},{missing}")
    problems = caught.value.problems
    annotations = f"{data}/annotations.json"
    expected = [
        f"{annotations}: episode #0 (id=0) field 'actions[3]': 9 is not an action id",
        f"{annotations}: episode #1 (id=1) field 'instructions'",
        f"{annotations}: episode #2 (id=2): missing field(s) 'video'",
        f"{annotations}: episode #3 (id=3) field 'video': frame folder {data / 'images/nowhere/rgb'} does",
        f"{annotations}: episode #4 (id=4) field 'actions': ",
        f"{missing.resolve()}/annotations.json: missing",
    ]
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert str(problem).startswith(start), (problem, start)
    assert str(caught.value).startswith("6 data problem(s):")


def test_malformed_json_names_the_file(tmp_path):
    source = tmp_path / "broken"
    (source / "images").mkdir(parents=True)
    (source / "annotations.json").write_text('[{"id": 0, "video": ')
    with pytest.raises(DataValidationError, match="not valid JSON") as caught:
        load_episodes(str(source))
    assert str(caught.value.problems[0]).startswith(f"{source.resolve()}/annotations.json: not valid JSON")

    (source / "annotations.json").write_text('{"episodes": []}')
    with pytest.raises(DataValidationError, match="top level is dict; expected a JSON list"):
        load_episodes(str(source))


def test_write_checkpoint_never_overwrites(tiny_checkpoint, tmp_path):
    before = _snapshot(tiny_checkpoint)
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        write_checkpoint(tiny_checkpoint)
    assert _snapshot(tiny_checkpoint) == before

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(folder)):
        write_checkpoint(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no .partial left beside it


def test_write_trajectories_refuses_an_existing_dataset(synthetic_data, tmp_path):
    data = copy_dataset(synthetic_data, tmp_path / "data")
    before = _snapshot(data)
    with pytest.raises(ValueError, match=r"annotations\.json already exists"):
        write_trajectories(data, episodes=2, min_steps=20, max_steps=30, seed=5)
    assert _snapshot(data) == before
    assert json.loads((data / "annotations.json").read_text()) == read_annotations(synthetic_data)
