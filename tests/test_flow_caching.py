"""Planning stages are cached on content: unchanged inputs hit, an edited annotations file re-indexes.

Real Prefect runs (test harness server), real files; `plan_only=True` stops before torchrun.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.parameters import TrainRequest
from tests.helpers import (
    PLANNING_STAGES,
    copy_dataset,
    read_annotations,
    run_plan_only,
    tiny_request,
    write_annotations,
)

PLANNING = PLANNING_STAGES
DATA_INDEPENDENT = tuple(stage for stage in PLANNING if stage != "data-module")


def _plan(request: TrainRequest, plan_root: Path):
    return run_plan_only(request, plan_root)


@pytest.fixture
def inputs(prefect_harness, tiny_checkpoint, synthetic_data, tmp_path):
    data = copy_dataset(synthetic_data, tmp_path / "data")
    # A private copy: stages keyed only on the checkpoint (vision tower) must not hit results that
    # other tests in this session cached for the shared one.
    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    request = tiny_request(
        model_name_or_path=str(checkpoint), video_folder=str(data), output_dir=str(tmp_path / "out")
    )
    return request, data, tmp_path / "plans"


def test_second_run_is_cached_and_edited_annotations_reindex(inputs):
    request, data, plan_root = inputs

    first, states = _plan(request, plan_root)
    assert {name: states[name] for name in PLANNING} == {name: ["Completed"] for name in PLANNING}
    assert states["trainer-initialization"] == ["Completed"]

    second, states = _plan(request, plan_root)
    assert {name: states[name] for name in PLANNING} == {name: ["Cached"] for name in PLANNING}
    assert states["trainer-initialization"] == ["Completed"]  # not cached: it looks for checkpoints
    first_plan = json.loads(Path(first.plan_path).read_text())
    assert json.loads(Path(second.plan_path).read_text())["data"] == first_plan["data"]

    # Edit one instruction in place: only the stage that reads the data runs again.
    episodes = read_annotations(data)
    episodes[0]["instructions"][0] = "Walk to the red door and stop."
    write_annotations(data, episodes)
    third, states = _plan(request, plan_root)
    assert {name: states[name] for name in DATA_INDEPENDENT} == {n: ["Cached"] for n in DATA_INDEPENDENT}
    assert states["data-module"] == ["Completed"]
    edited_plan = json.loads(Path(third.plan_path).read_text())
    assert edited_plan["data"]["fingerprint"] != first_plan["data"]["fingerprint"]
    assert edited_plan["data"]["index_path"] != first_plan["data"]["index_path"]
    assert Path(edited_plan["data"]["index_path"]).is_dir()

    from datasets import load_from_disk

    episodes_table = load_from_disk(str(Path(edited_plan["data"]["index_path"]) / "navigation" / "episodes"))
    assert "Walk to the red door and stop." in {i for row in episodes_table["instructions"] for i in row}


def test_deleted_index_folder_is_rebuilt(inputs):
    request, _, plan_root = inputs
    first, _ = _plan(request, plan_root)
    index_path = Path(json.loads(Path(first.plan_path).read_text())["data"]["index_path"])
    shutil.rmtree(index_path)

    second, states = _plan(request, plan_root)
    # The cached plan points at a missing folder, so the flow refreshes the data stage.
    assert states["data-module"] == ["Cached", "Completed"]
    assert json.loads(Path(second.plan_path).read_text())["data"]["index_path"] == str(index_path)
    assert index_path.is_dir() and (index_path / "manifest.json").is_file()


def test_plan_json_carries_the_run_as_data(inputs):
    request, _, plan_root = inputs
    result, _ = _plan(request, plan_root)
    plan = json.loads(Path(result.plan_path).read_text())
    assert plan["flags"]["num_history"] == 8  # typed values, not command-line strings
    assert plan["flags"]["output_dir"] == request.output_dir
    workers = plan["worker_flags"]
    assert workers["data_index"] == plan["data"]["index_path"] and Path(workers["data_index"]).is_dir()
    assert workers["use_cpu"] is True and workers["ddp_backend"] == "gloo"
    # each flow run trains into its own folder under output_dir
    assert workers["output_dir"] == result.output_dir
    assert Path(result.output_dir).parent == Path(request.output_dir).resolve()
    assert plan["arguments"]["data"]["num_history"] == 8
    assert plan["arguments"]["model"]["version"] == "qwen_1_5"
    assert plan["environment"]["device"] == "cpu"
