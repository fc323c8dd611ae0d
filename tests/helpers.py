"""Shared helpers for tests that run the real Prefect flow and read its task runs back."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

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


@contextmanager
def mlflow_tracking_at(uri: str) -> Iterator[str]:
    """MLflow pointed at `uri` for this process (`mlflow.set_tracking_uri`) and for the flow's
    torchrun workers (`MLFLOW_TRACKING_URI`); both restored on exit. For a module- or
    session-scoped fixture; a test asks for the `mlflow_tracking` fixture (tests/conftest.py)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(previous)


# `streamvln_train` parameters that are not TrainRequest fields (return_state is Prefect's).
FLOW_OPTIONS = ("plan_root", "resume_from", "plan_only", "train_retries", "return_state")


def train_flow(*, request=None, launch=None, tracking: str | tuple[str, str] | None = None, **fields):
    """One run of the real `streamvln_train` flow on the tiny CPU preset, in this process.

    `fields`: TrainRequest fields over configs/tiny_cpu.yaml (`tiny_request`), and the flow's own
    options (FLOW_OPTIONS: plan_root, resume_from, plan_only, train_retries, return_state);
    `request`: a ready TrainRequest instead of the fields.
    `launch`: a LaunchConfig, or its fields over `device="cpu"` (one process unless nproc_per_node says).
    `tracking`: one name for the MLflow experiment and the registered model, or the pair
    (experiment, model); None keeps the flow's default. Returns what the flow returns.
    """
    from flows.train import streamvln_train
    from tasks.parameters import LaunchConfig, TrackingConfig

    options = {name: fields.pop(name) for name in FLOW_OPTIONS if name in fields}
    if "plan_root" in options:
        options["plan_root"] = str(options["plan_root"])
    if tracking is not None:
        experiment, model = (tracking, tracking) if isinstance(tracking, str) else tracking
        options["tracking"] = TrackingConfig(experiment_name=experiment, model_name=model)
    if request is None:
        request = tiny_request(**fields)
    else:
        assert not fields, f"request fields {sorted(fields)} beside a ready request"
    if not isinstance(launch, LaunchConfig):
        launch = LaunchConfig(**{"device": "cpu", **(launch or {})})
    return streamvln_train(**request.groups(), launch=launch, **options)


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
    return train_flow(request=request, plan_root=plan_root, plan_only=plan_only, return_state=True)


def run_plan_only(request, plan_root: Path):
    """One plan-only flow run on the CPU; returns (result, task name -> state names)."""
    state = _cpu_flow_state(request, plan_root, plan_only=True)
    assert state.is_completed(), state
    states = task_states(state.state_details.flow_run_id, expect=(*PLANNING_STAGES, "trainer-initialization"))
    return state.result(), states


def run_failing_flow(request, plan_root: Path, failing_stage: str = "data-module"):
    """Run the full flow (it would train if planning passed); it must fail in `failing_stage`.

    Checks what every bad-input case must hold: the failure is an InputError (bad flags or data), nothing
    was written to output_dir (train.log and plan.json appear once torchrun would start), the
    failing stage is the last task that ran. Returns (error, task name -> state names).
    """
    from streamvln_model.config.errors import InputError

    state = _cpu_flow_state(request, plan_root, plan_only=False)
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError), repr(error)
    output_dir = Path(request.output_dir)
    assert not output_dir.exists() or not any(output_dir.iterdir()), sorted(output_dir.iterdir())
    states = task_states(state.state_details.flow_run_id, expect=(failing_stage,))
    allowed = PLANNING_STAGES[: PLANNING_STAGES.index(failing_stage) + 1]
    assert set(states) <= set(allowed), states  # no task after the failing one
    assert states[failing_stage][-1] == "Failed", states
    return error, states


# --- The promotion and pull tests' two trained models (`trained_models` in tests/conftest.py) ----
# The cheapest recipe measured to separate the two models reliably: many short episodes (8 turns,
# one chunk: too many to learn by heart, so only the frames tell the answers), a few long ones
# (samples with history, as the pull test asks with history), a high learning rate. The model
# starts reading its frames after ~130 steps (at 120 it had not yet, with this seed). Measured
# after 200 steps on the held-out scene: true actions 0.985 action accuracy / 0.960 exact turns,
# shuffled actions 0.284 / 0.000, the untrained checkpoint 0 / 0 (124 turns, 482 actions).
SHORT_EPISODES, LONG_EPISODES = 48, 4
TRAIN_STEPS, LEARNING_RATE = 200, "1e-2"
RECIPE = [
    "--version", "qwen_1_5", "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
    "--mm_use_im_patch_token", "false", "--num_history", "8", "--num_future_steps", "4",
]  # fmt: skip


@dataclass(frozen=True)
class TrainedModels:
    train: str  # --video_folder: episodes of scene "kitchen", true actions (two folders)
    shuffled_train: str  # the same episodes, each one's actions shuffled
    heldout: Path  # episodes of scene "attic"
    good: Path
    shuffled: Path


def _shuffled_copy(source: Path, target: Path) -> Path:
    """The same frames and instructions; each episode's actions in a random order."""
    shutil.copytree(source, target)
    episodes = json.loads((target / "annotations.json").read_text())
    rng = random.Random(0)
    for episode in episodes:
        real = episode["actions"][1:]
        rng.shuffle(real)
        episode["actions"] = [episode["actions"][0], *real]
    (target / "annotations.json").write_text(json.dumps(episodes))
    return target


def _train_promotion_model(checkpoint: Path, data: str, out: Path) -> Path:
    from streamvln_model.training.worker import train

    train([
        "--model_name_or_path", str(checkpoint), "--video_folder", data, "--output_dir", str(out),
        "--use_cpu", "true", "--max_steps", str(TRAIN_STEPS), "--per_device_train_batch_size", "2",
        "--learning_rate", LEARNING_RATE, "--warmup_ratio", "0.05", "--lr_scheduler_type", "cosine",
        "--weight_decay", "0", "--logging_steps", "20", "--save_strategy", "no", "--report_to", "none",
        "--gradient_checkpointing", "false", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
        "--seed", "0", *RECIPE,
    ])  # fmt: skip
    return out


def build_trained_models(checkpoint: Path, root: Path) -> TrainedModels:
    """Data and the two models trained from `checkpoint`, written under `root` (a fresh folder):
    the `trained_models` session fixture of tests/conftest.py."""
    from streamvln_model.synthetic import write_trajectories

    short, long = root / "train" / "short", root / "train" / "long"
    models = TrainedModels(
        f"{short},{long}",
        f"{short}-shuffled,{long}-shuffled",
        root / "heldout",
        root / "good",
        root / "shuffled",
    )
    write_trajectories(short, SHORT_EPISODES, min_steps=28, max_steps=31, seed=1, scene="kitchen")
    write_trajectories(long, LONG_EPISODES, min_steps=60, max_steps=64, seed=2, scene="kitchen")
    for folder in (short, long):
        _shuffled_copy(folder, Path(f"{folder}-shuffled"))
    # Episodes of 28-40 steps: those over 32 steps also give samples with history.
    write_trajectories(models.heldout, 6, min_steps=28, max_steps=40, seed=99, scene="attic")
    for data, out in ((models.train, models.good), (models.shuffled_train, models.shuffled)):
        _train_promotion_model(checkpoint, data, out)
    return models


def register_version(client, name: str, folder: Path, train: str) -> str:
    """Log `folder` as a pyfunc into a run that records its training folder (as the flow's
    runs do: `data.video_folder`), register it under `name` (`client`: an MlflowClient);
    returns the version."""
    import mlflow

    from streamvln_model.registry.pyfunc import log_checkpoint_model

    experiment = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    run = client.create_run(experiment.experiment_id)
    client.log_param(run.info.run_id, "data.video_folder", train)
    info = log_checkpoint_model(folder, run.info.run_id)
    client.set_terminated(run.info.run_id)
    return str(mlflow.register_model(info.model_uri, name).version)
