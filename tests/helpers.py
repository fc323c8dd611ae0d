"""Shared helpers for tests that run the real Prefect flow and read its task runs back."""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from pathlib import Path

# A stage-two mixture (`write_mixture` keywords) with every part present, each as small as it gets:
# checked, indexed and uploaded in a few seconds.
SMALL_MIXTURE = {
    "seed": 3,
    "episodes": 2,
    "dagger_episodes": 1,
    "min_steps": 20,
    "max_steps": 24,
    "videos": 3,
    "video_frames": 8,
    "scenes": 1,
    "frames_per_scene": 8,
    "documents": 4,
    "shards": 2,
}
# Settings from the developer's machine that would send requests elsewhere than the moto server.
FOREIGN_AWS_SETTINGS = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS")


def task_states(flow_run_id, expect: tuple[str, ...] = (), timeout_s: float = 30.0) -> dict[str, list[str]]:
    """Task name (the run name without its `-<suffix>`) -> state names, in start order.

    Prefect 3 reports task runs to the API asynchronously (events), so right after a flow
    returns the API may not hold every task run yet: wait until each name in `expect` is
    there and every task run read is in a final state.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            states: dict[str, list[str]] = defaultdict(list)
            for run in sorted(runs, key=lambda r: r.created):
                states[run.name.rsplit("-", 1)[0]].append(run.state.name)
            settled = all(run.state and run.state.is_final() for run in runs)
            if (settled and all(name in states for name in expect)) or time.monotonic() > deadline:
                return dict(states)
            time.sleep(0.5)


def service_env(prefect_harness, mlflow_server) -> dict[str, str]:
    """The test session's Prefect API and MLflow server, for a subprocess."""
    import os

    return {
        **os.environ,
        "PREFECT_API_URL": prefect_harness.api_url,
        "PREFECT_HOME": str(prefect_harness.home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_harness.results_path),
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
    }


def copy_dataset(source: Path, target: Path) -> Path:
    """A private, editable copy of a (session-shared) synthetic dataset."""
    shutil.copytree(source, target)
    return target


def read_annotations(dataset: Path) -> list[dict]:
    return json.loads((dataset / "annotations.json").read_text())


def write_annotations(dataset: Path, episodes: list[dict]) -> None:
    (dataset / "annotations.json").write_text(json.dumps(episodes, indent=1))


TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def tiny_request(**fields):
    """A TrainRequest with the tiny CPU preset's recipe (configs/tiny_cpu.yaml) and these fields.

    The flow's form declares no defaults of its own (unset = the published parser's defaults,
    several of which StreamVLN's scripts override), so tests start from the shipped preset.
    """
    from flows.presets import preset_parameters
    from tasks.parameters import TrainRequest

    request = preset_parameters(TINY_PRESET)["request"]
    extra = {**request.get("extra_args", {}), **fields.pop("extra_args", {})}
    return TrainRequest(**{**request, **fields, "extra_args": extra})


PLANNING_STAGES = (
    "parse-arguments",
    "initialize-environment",
    "model-setup",
    "tokenizer-setup",
    "vision-tower-setup",
    "gradient-configuration",
    "memory-plan",
    "data-module",
)


def use_moto_s3(patch, moto_s3, cache: Path) -> None:
    """The environment a job sets for S3, pointed at the moto server (`patch`: a
    pytest.MonkeyPatch); `cache` is the read-through cache. The flow and its torchrun workers
    inherit it."""
    from streamvln_model.data import locations as storage

    patch.setenv("AWS_ACCESS_KEY_ID", moto_s3.key)
    patch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret)
    patch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in FOREIGN_AWS_SETTINGS:
        patch.delenv(name, raising=False)
    patch.setenv(storage.CACHE_ENV, str(cache))


def _cpu_flow_state(request, plan_root: Path, plan_only: bool):
    """The final state of one flow run on the CPU (one process), planned under `plan_root`."""
    from flows.train import streamvln_train
    from tasks.parameters import LaunchConfig

    return streamvln_train(
        **request.groups(),
        launch=LaunchConfig(device="cpu"),
        plan_root=str(plan_root),
        plan_only=plan_only,
        return_state=True,
    )


def run_plan_only(request, plan_root: Path):
    """One plan-only flow run on the CPU; returns (result, task name -> state names)."""
    state = _cpu_flow_state(request, plan_root, plan_only=True)
    assert state.is_completed(), state
    states = task_states(state.state_details.flow_run_id, expect=(*PLANNING_STAGES, "trainer-initialization"))
    return state.result(), states


def run_failing_flow(request, plan_root: Path, failing_stage: str = "data-module"):
    """Run the full flow (it would train if planning passed); it must fail in `failing_stage`.

    Checks what every bad-input case must hold: the failure is a DataValidationError, nothing
    was written to output_dir (train.log and plan.json appear once torchrun would start), the
    failing stage is the last task that ran. Returns (error, task name -> state names).
    """
    from streamvln_model.data.validation.errors import DataValidationError

    state = _cpu_flow_state(request, plan_root, plan_only=False)
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DataValidationError), repr(error)
    output_dir = Path(request.output_dir)
    assert not output_dir.exists() or not any(output_dir.iterdir()), sorted(output_dir.iterdir())
    states = task_states(state.state_details.flow_run_id, expect=(failing_stage,))
    allowed = PLANNING_STAGES[: PLANNING_STAGES.index(failing_stage) + 1]
    assert set(states) <= set(allowed), states  # no task after the failing one
    assert states[failing_stage][-1] == "Failed", states
    return error, states
