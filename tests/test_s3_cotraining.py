"""Stage-two co-training read from a real S3 API (moto), end to end through the flow.

A small synthetic mixture (navigation + DAgger + video QA + ScanQA + MMC4 and its YAML, every
path an `s3://` URL) is uploaded to the session's moto server and its local copy deleted, so
every byte must come through `streamvln_model.data.locations`. Credentials, endpoint and the
read-through cache reach the flow and its torchrun workers through the environment only.

Run 1 plans (data check + index), trains on 2 gloo ranks with `group_by_task` and registers the
model; it must fetch objects (GET > 0). Run 2, same data and plan root, new output_dir, must fetch
no object at all: the data stage is served from its cache or rebuilds the same index from the
media-check cache, and the workers read every frame from the per-machine cache. Listing and HEAD
requests (change detection) are allowed; the counts are recorded at the server
(tests/s3_requests.py), which also sees the workers' requests.

Cost on 2 CPU cores: ~110 s for the two runs, plus the session's services (Prefect, MLflow, moto,
the tiny checkpoint: ~50 s when this module runs alone).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from streamvln_model.synthetic.mixture import MixtureSummary, write_mixture
from tests.helpers import SMALL_MIXTURE, mlflow_tracking_at, task_states, train_flow, use_moto_s3
from tests.s3_requests import count_requests

STEPS = 3
NPROC = 2  # two ranks: the group_by_task sampler splits task-pure batches between ranks
TASKS = ("navigation", "qa", "scanqa", "mmc4")


@dataclass(frozen=True)
class Run:
    """One flow run and the S3 requests the server received while it ran."""

    result: object  # flows.train.TrainFlowResult
    requests: Counter
    seconds: float

    def plan(self) -> dict:
        return json.loads(Path(self.result.plan_path).read_text())

    def data_states(self) -> list[str]:
        return task_states(self.result.flow_run_id, expect=("data-module",))["data-module"]


def expected_tasks(summary: MixtureSummary) -> dict[str, int]:
    """Samples per task the YAML selects, counted from the written files (before the upload).

    The strategies are those `mixture_config` writes: QA `all` (the subset keeps every video),
    ScanQA `random:50%` and `first:max(1, n // 2)`, MMC4 shard 0 `all` and the others `end:50%`
    (N% of a file's entries rounds up).
    """
    navigation = sum(
        len(json.loads(s.annotations_path.read_text())) for s in (summary.navigation, summary.dagger)
    )
    shards = [sum(1 for line in p.read_text().splitlines() if line.strip()) for p in summary.mmc4.shard_paths]
    return {
        "navigation": navigation,
        "qa": len(json.loads(summary.qa.json_path.read_text())),
        "scanqa": math.ceil(summary.scanqa.scanqa_questions / 2)
        + max(1, summary.scanqa.sqa3d_questions // 2),
        "mmc4": shards[0] + sum(math.ceil(n / 2) for n in shards[1:]),
    }


def upload(moto_s3, local: Path, url: str) -> int:
    """Copy the tree under `url` (bucket created); returns how many objects landed there."""
    fs = moto_s3.fs()
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    fs.mkdir(bucket)
    fs.put(f"{local}/", f"{bucket}/{prefix}", recursive=True)
    fs.invalidate_cache()
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    uploaded = sorted(name.removeprefix(f"{bucket}/{prefix}/") for name in fs.find(f"{bucket}/{prefix}"))
    assert uploaded == files, "the bucket must hold exactly the written tree"
    return len(files)


@pytest.fixture(scope="module")
def s3_data(moto_s3, tmp_path_factory) -> Iterator[dict]:
    """The mixture on S3 only; the environment a job would set (flow and workers inherit it)."""
    root = tmp_path_factory.mktemp("s3_cotraining")
    url = f"s3://cotrain-{uuid.uuid4().hex[:12]}/stage_two"
    local = root / "stage_two"
    summary = write_mixture(local, url_prefix=url, **SMALL_MIXTURE)
    expected = expected_tasks(summary)
    objects = upload(moto_s3, local, url)
    shutil.rmtree(local)  # nothing can be read locally by accident
    with pytest.MonkeyPatch.context() as patch:
        use_moto_s3(patch, moto_s3, root / "cache")
        yield {
            "root": root,
            "url": url,
            "endpoint": moto_s3.endpoint_url,
            "summary": summary,
            "expected": expected,
            "objects": objects,
        }


@pytest.fixture(scope="module")
def runs(s3_data, prefect_harness, mlflow_server, tiny_checkpoint) -> Iterator[dict[str, Run]]:
    """Two full flow runs (plan + train + register) on the same data and plan root.

    Measured on the shared 2-core machine (load 3-5): run 1 about 55 s, run 2 about 50 s, of
    which torchrun start-up and 3 steps on 2 ranks ~30 s; one rank would save ~10 s per run but
    not exercise two processes fetching into one cache, nor the group_by_task split across ranks.
    """
    root, summary = s3_data["root"], s3_data["summary"]
    data_flags = {k: v for k, v in summary.flags.items() if k != "multi_task_training"}
    assert all(v.startswith("s3://") for v in data_flags.values())

    def run(name: str) -> Run:
        start = time.monotonic()
        with count_requests(s3_data["endpoint"]) as requests:
            result = train_flow(
                model_name_or_path=str(tiny_checkpoint),
                output_dir=str(root / name),
                **data_flags,
                multi_task_training=True,
                group_by_task=True,
                frames_upbound=4,
                force_sample=True,
                max_steps=STEPS,
                logging_steps=1,
                save_strategy="no",
                launch={"nproc_per_node": NPROC},
                tracking="s3-cotraining",
                plan_root=root / "plans",
            )
        done = Run(result=result, requests=requests, seconds=time.monotonic() - start)
        objects = s3_data["objects"]
        print(f"{name}: {done.seconds:.1f} s, S3 requests {dict(requests)}, {objects} objects")  # -s
        return done

    with mlflow_tracking_at(mlflow_server.uri):
        first = run("run1")
        second = run("run2")
        yield {"first": first, "second": second}


def test_first_run_cotrains_on_every_task_read_from_s3(runs, s3_data, mlflow_server, tmp_path) -> None:
    first = runs["first"]
    assert first.result.steps == STEPS and first.result.world_size == NPROC
    assert first.result.model_uri and first.result.last_loss is not None
    assert first.requests["GET object"] > 0, first.requests

    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(first.result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data.fingerprint"] == first.plan()["data"]["fingerprint"]
    local = client.download_artifacts(run.info.run_id, "data/validation_report.json", str(tmp_path))
    report = json.loads(Path(local).read_text())
    assert report["status"] == "passed" and report["problems"] == []
    assert {task: report["tasks"].get(task) for task in TASKS} == s3_data["expected"]
    assert all(root["location"].startswith(s3_data["url"]) for root in report["roots"])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))


def test_second_run_fetches_no_object(runs) -> None:
    first, second = runs["first"], runs["second"]
    assert second.result.steps == STEPS and second.result.world_size == NPROC
    assert second.result.output_dir != first.result.output_dir
    assert second.requests["GET object"] == 0, second.requests
    # The data stage is keyed on the data settings and the listing, not the output folder: the
    # second run finds it Cached and trains on the same content-keyed index.
    index = second.plan()["worker_flags"]["data_index"]
    assert index == first.plan()["worker_flags"]["data_index"], second.data_states()
    assert second.data_states() == ["Cached"], second.data_states()


def test_each_object_is_fetched_once_per_machine(runs, s3_data) -> None:
    """The cache's contract (streamvln_model/data/storage.py): a remote file is fetched once per
    machine, whoever reads it first (the data check, a worker of either rank): the GETs of the
    first run equal the distinct objects in the cache, and the workers read the very entries the
    check fetched at their checked version."""
    cache = s3_data["root"] / "cache"
    entries = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".version")]
    assert entries and runs["first"].requests["GET object"] == len(entries), runs["first"].requests
