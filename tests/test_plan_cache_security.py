"""A crafted file in the (shared) plan cache is data that fails to validate, never code that runs.

Prefect decodes a cached result with the serializer its stored record names, so without the
checks in `tasks/caching.py` each payload below would run when the flow looks its stage up:
a pickle, Prefect's "json" serializer with a decoder named by the file, or its default decoder
building a class named in a `__class__` key. Here every planning entry of a real plan-only run
is overwritten with one of them, then the plan runs again: nothing runs, every stage computes its
plan again (Completed, not Cached), the plan equals the first one, and the entries it rewrote
are served from the cache by the third run.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import prefect
import pytest

from flows.presets import preset_parameters
from tasks.caching import KEY_FOLDER, STAGE_RESULT_SERIALIZER, UntrustedResult, checked_metadata
from tasks.parameters import TrainRequest
from tasks.types import RESULT_TYPES, DataPlan, SavedModel, TrainerPlan, TrainResult
from tests.helpers import PLANNING_STAGES, TINY_PRESET, copy_dataset, run_plan_only

PLANNING = PLANNING_STAGES


class TouchOnUnpickle:
    """Unpickling this creates `path`: proof that a payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@dataclass
class TouchOnInit:
    """Building this (as a decoder instantiating a named class would) creates `path`."""

    path: str

    def __post_init__(self) -> None:
        Path(self.path).touch()


def touch_named_path(obj: dict) -> dict:
    """An `object_hook` a crafted "json" record names: called with every decoded object."""
    if "path" in obj:
        Path(obj["path"]).touch()
    return obj


def _metadata(key: str, serializer: dict) -> bytes:
    return json.dumps(
        {
            "storage_key": key,
            "expiration": None,
            "serializer": serializer,
            "prefect_version": prefect.__version__,
        }
    ).encode()


def _pickle_blob(marker: Path) -> bytes:
    return base64.encodebytes(cloudpickle.dumps(TouchOnUnpickle(marker)))


def _crafted_entries(marker: Path, other_stage_plan: bytes) -> list[tuple[str, dict | None, bytes]]:
    """(what, metadata serializer or None for no metadata file, result file content)."""
    here = __name__
    class_payload = json.dumps({"__class__": f"{here}.TouchOnInit", "data": {"path": str(marker)}}).encode()
    pickle_record = json.dumps(
        {
            "metadata": {"storage_key": "k", "serializer": {"type": "pickle", "picklelib": "cloudpickle"}},
            "result": _pickle_blob(marker).decode(),
        }
    ).encode()
    return [
        ("cloudpickle result", {"type": "pickle", "picklelib": "cloudpickle"}, _pickle_blob(marker)),
        ("whole pickle record, no key file", None, pickle_record),
        ("json naming a class", {"type": "json"}, class_payload),
        (
            "json naming a decoder",
            {"type": "json", "object_decoder": f"{here}.touch_named_path"},
            class_payload,
        ),
        ("our type naming a class", {"type": STAGE_RESULT_SERIALIZER.type}, class_payload),
        (
            "our type with settings",
            {"type": STAGE_RESULT_SERIALIZER.type, "jsonlib": "pickle"},
            class_payload,
        ),
        ("another stage's valid plan", {"type": STAGE_RESULT_SERIALIZER.type}, other_stage_plan),
    ]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _plan(request: TrainRequest, plan_root: Path) -> tuple[dict, dict[str, list[str]]]:
    """The plan as data, without the one field each flow run sets for itself: its run folder."""
    result, states = run_plan_only(request, plan_root)
    plan = json.loads(Path(result.plan_path).read_text())
    assert plan["worker_flags"].pop("output_dir") == result.output_dir
    return plan, states


@pytest.fixture
def tiny_request(prefect_harness, tiny_checkpoint, synthetic_data, tmp_path) -> TrainRequest:
    """The tiny preset on private copies of the shared inputs, so every cache entry is this test's."""
    preset = preset_parameters(TINY_PRESET)["request"]
    return TrainRequest(
        **{
            **preset,
            "model_name_or_path": str(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")),
            "video_folder": str(copy_dataset(synthetic_data, tmp_path / "data")),
            "output_dir": str(tmp_path / "out"),
        }
    )


def test_crafted_cache_entries_never_run_and_the_stages_recompute(prefect_harness, tiny_request, tmp_path):
    results = prefect_harness.results_path
    before = _files(results)
    first, states = _plan(tiny_request, tmp_path / "plans")
    assert {name: states[name] for name in PLANNING} == {name: ["Completed"] for name in PLANNING}

    written = _files(results) - before
    keys = sorted(p.name for p in written if p.parent == results / KEY_FOLDER)
    assert len(keys) == len(PLANNING), sorted(map(str, written))
    assert written == {results / key for key in keys} | {results / KEY_FOLDER / key for key in keys}
    # Results are JSON data naming one of the stage result models.
    assert {json.loads((results / key).read_bytes())["type"] for key in keys} <= set(RESULT_TYPES)

    marker = tmp_path / "payload-ran"
    crafted = _crafted_entries(marker, other_stage_plan=(results / keys[0]).read_bytes())
    assert len(keys) >= len(crafted)  # every kind of crafted entry is tried; extra stages get them again
    for key, (_, serializer, content) in zip(
        keys, itertools.cycle(crafted)
    ):  # keys[0]'s plan lands elsewhere
        (results / key).write_bytes(content)
        if serializer is None:
            (results / KEY_FOLDER / key).unlink()
        else:
            (results / KEY_FOLDER / key).write_bytes(_metadata(key, serializer))

    second, states = _plan(tiny_request, tmp_path / "plans")
    assert not marker.exists()
    # Every refused entry is a cache miss: the stage computes its plan again, as on a first run.
    assert {name: states[name] for name in PLANNING} == {name: ["Completed"] for name in PLANNING}
    assert second == first

    third, states = _plan(tiny_request, tmp_path / "plans")
    assert {name: states[name] for name in PLANNING} == {name: ["Cached"] for name in PLANNING}
    assert third == first  # a plan read back from JSON equals the computed one
    assert not marker.exists()


def test_serializer_round_trips_results_and_refuses_other_classes(tmp_path):
    results = [
        TrainResult(
            output_dir="o", steps=2, world_size=2, first_loss=2.5, last_loss=1.0, losses=[(1, 2.5), (2, 1.0)]
        ),
        SavedModel(output_dir="o", model_uri="models:/m@a", registered_name="m", version="1", alias="a"),
        TrainerPlan(plan_path="p", output_dir="o", command=["torchrun"], resume_from=None),
        DataPlan(index_path="i", fingerprint="f", summary={"sources": ("a", "b"), "path": Path("/x")}),
    ]
    for result in results:
        assert STAGE_RESULT_SERIALIZER.loads(STAGE_RESULT_SERIALIZER.dumps(result)) == result
    # JSON values at construction: the plan in memory is the plan read back from the cache.
    assert results[-1].summary == {"sources": ["a", "b"], "path": "/x"}

    marker = tmp_path / "payload-ran"
    for payload in (
        {"type": f"{__name__}.TouchOnInit", "data": {"path": str(marker)}},
        {"__class__": f"{__name__}.TouchOnInit", "data": {"path": str(marker)}},
        {"type": ["DataPlan"], "data": {}},
    ):
        with pytest.raises(UntrustedResult):
            STAGE_RESULT_SERIALIZER.loads(json.dumps(payload).encode())
    with pytest.raises(TypeError, match="not a stage result"):
        STAGE_RESULT_SERIALIZER.dumps(TrainRequest(model_name_or_path="m", video_folder="v", output_dir="o"))
    assert not marker.exists()


def test_cache_entries_of_our_own_format_must_hold_the_stage_plan():
    plan = DataPlan(index_path="i", fingerprint="f", summary={"samples": 3})
    ours = {"type": STAGE_RESULT_SERIALIZER.type}
    good = STAGE_RESULT_SERIALIZER.dumps(plan)
    checked = json.loads(checked_metadata("k", _metadata("/elsewhere/k", ours), good, DataPlan))
    assert checked == {"storage_key": "k", "expiration": None, "serializer": ours}  # read at `k`, here
    assert STAGE_RESULT_SERIALIZER.loads(good) == plan

    unknown_field = json.dumps({"type": "DataPlan", "data": {**plan.model_dump(), "extra": 1}}).encode()
    failure = STAGE_RESULT_SERIALIZER.dumps(ValueError("a stored failure is no plan"))
    for metadata, result, expected in (
        (_metadata("k", ours), unknown_field, DataPlan),
        (_metadata("k", ours), failure, DataPlan),
        (_metadata("k", ours), good, TrainerPlan),  # another stage's plan
        (_metadata("k", {**ours, "jsonlib": "pickle"}), good, DataPlan),
        (b"[1, 2]", good, DataPlan),
        (b"\x80\x04not json", good, DataPlan),
    ):
        with pytest.raises(UntrustedResult):
            checked_metadata("k", metadata, result, expected)
