"""One preflight for every launch path: `streamvln train --plan-only`, the flow's stages, the worker.

Argument problems are reported all at once within seconds, before the embedded Prefect server
starts; the same problems appear in the flow's parse-arguments task for a UI-triggered run; a
checkpoint with a missing or wrongly shaped weight fails before any weight loads, naming the
tensor, in the standalone worker and in the flow's model stage alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import REPO_ROOT
from tests.helpers import TINY_PRESET, task_states, train_flow

BAD_VALUES = {
    "per_device_train_batch_size": 0,
    "learning_rate": -1.0e-4,
    "mm_projector_lr": float("nan"),
    "num_history": 5,  # does not divide num_frames 32
}
EXPECTED_PROBLEMS = (
    "--per_device_train_batch_size=0: must be >= 1",
    "--learning_rate=-0.0001: must be a finite number >= 0",
    "--mm_projector_lr=nan: must be a finite number >= 0",
    "--num_history=5 does not divide --num_frames=32",
)


def _preset(tmp_path: Path, **request) -> Path:
    from flows.presets import group_of

    preset = yaml.safe_load(TINY_PRESET.read_text())
    for key, value in request.items():  # each flag in its group (an unknown one under training)
        preset.setdefault(group_of(key) or "training", {})[key] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def _cli(args: list[str], cwd: Path, prefect_home: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(prefect_home)  # the embedded server would create its database here
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.monotonic() - start


@pytest.mark.processes  # the CLI
def test_bad_arguments_are_all_reported_within_seconds_before_prefect_starts(tmp_path, tiny_checkpoint):
    config = _preset(
        tmp_path,
        model_name_or_path=str(tmp_path / "no-such-checkpoint"),
        video_folder=str(tmp_path),
        output_dir=str(tmp_path / "out"),
        learnig_rate=1e-3,  # misspelled key: an error, not a silent default
        **BAD_VALUES,
    )
    home = tmp_path / "prefect-home"
    done, seconds = _cli(["train", str(config), "--plan-only"], REPO_ROOT, home)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("streamvln train: error: ")
    assert "Traceback" not in done.stderr
    for problem in EXPECTED_PROBLEMS:
        assert problem in done.stderr
    assert "'learnig_rate': unknown flag. Fix: did you mean 'learning_rate'?" in done.stderr
    assert f"--model_name_or_path {tmp_path / 'no-such-checkpoint'}: no config.json there" in done.stderr
    assert seconds < 10, f"took {seconds:.1f} s"
    assert not home.exists(), "the embedded Prefect server was started"
    assert not (tmp_path / "out").exists()


@pytest.mark.processes  # the CLI
@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"num_train_epochs": -1}, "--num_train_epochs=-1.0 with --max_steps unset: trains nothing"),
        ({"max_steps": 0}, "--max_steps=0: trains nothing"),
    ],
)
def test_runs_that_would_train_nothing_are_refused(
    tmp_path, tiny_checkpoint, synthetic_data, settings, problem
):
    overrides = {"max_steps": -1, **settings}
    config = _preset(
        tmp_path,
        model_name_or_path=str(tiny_checkpoint),
        video_folder=str(synthetic_data),
        output_dir=str(tmp_path / "out"),
        **overrides,
    )
    done, _ = _cli(["train", str(config), "--plan-only"], REPO_ROOT, tmp_path / "prefect-home")
    assert done.returncode == 2 and problem in done.stderr, done.stderr


@pytest.mark.processes  # the CLI
def test_cuda_on_a_cpu_host_is_refused(tmp_path, tiny_checkpoint, synthetic_data):
    config = _preset(
        tmp_path,
        model_name_or_path=str(tiny_checkpoint),
        video_folder=str(synthetic_data),
        output_dir=str(tmp_path / "out"),
    )
    preset = yaml.safe_load(config.read_text())
    preset["launch"] = {"device": "cuda", "nproc_per_node": 2}
    config.write_text(yaml.safe_dump(preset))
    done, _ = _cli(["train", str(config), "--plan-only"], REPO_ROOT, tmp_path / "prefect-home")
    assert done.returncode == 2
    assert "device cuda: this host has no CUDA device" in done.stderr


def test_the_parse_arguments_task_reports_the_same_problems(
    prefect_harness, tiny_checkpoint, synthetic_data, tmp_path
):
    """A run triggered from the UI (the flow called with a request) fails in parse-arguments."""
    state = _failed_flow(
        tmp_path,
        model_name_or_path=str(tmp_path / "no-such-checkpoint"),
        video_folder=str(synthetic_data),
        **BAD_VALUES,
    )
    message = str(state.result(raise_on_failure=False))
    for problem in EXPECTED_PROBLEMS:
        assert problem in message
    assert "no config.json there" in message
    states = task_states(state.state_details.flow_run_id, expect=("parse-arguments",))
    assert states["parse-arguments"] == ["Failed"]
    assert set(states) == {"parse-arguments"}


def _failed_flow(tmp_path: Path, **fields):
    """The flow on the tiny preset with these request fields; it must fail (returns its state)."""
    state = train_flow(
        output_dir=str(tmp_path / "out"), plan_root=tmp_path / "plans", return_state=True, **fields
    )
    assert state.is_failed(), state
    return state


@pytest.fixture(scope="module")
def broken_checkpoints(tiny_checkpoint, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Copies of the tiny checkpoint with one weight removed, and one weight of the wrong shape."""
    root = tmp_path_factory.mktemp("broken_checkpoints")
    weights = load_file(tiny_checkpoint / "model.safetensors")
    missing = "model.layers.1.mlp.down_proj.weight"
    reshaped = "model.mm_projector.2.weight"
    cases = {}
    for case, name in (("missing", missing), ("shape", reshaped)):
        folder = root / case
        shutil.copytree(tiny_checkpoint, folder)
        edited = dict(weights)
        if case == "missing":
            del edited[name]
        else:
            edited[name] = torch.zeros(edited[name].shape[0], edited[name].shape[1] + 1)
        save_file(edited, folder / "model.safetensors", metadata={"format": "pt"})
        cases[case] = (folder, name)
    return cases


def _expected_message(case: str, folder: Path, name: str) -> str:
    if case == "missing":
        return f"{folder}: checkpoint lacks weight {name!r}"
    return f"{folder}: weight {name!r} has shape [64, 65] in the checkpoint but the config expects [64, 64]"


@pytest.mark.processes  # torchrun
@pytest.mark.parametrize("case", ["missing", "shape"])
def test_standalone_worker_refuses_a_broken_checkpoint_before_loading(
    broken_checkpoints, synthetic_data, tmp_path, case
):
    folder, name = broken_checkpoints[case]
    from flows.presets import preset_flags

    preset = preset_flags(TINY_PRESET)
    flags = {k: v for k, v in preset.items() if k not in ("model_name_or_path", "video_folder", "output_dir")}
    argv = [
        a for k, v in flags.items() for a in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))
    ]
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
            "-m", "streamvln_model.train",
            "--model_name_or_path", str(folder), "--video_folder", str(synthetic_data),
            "--output_dir", str(tmp_path / "out"), *argv,
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    logs = done.stdout + done.stderr
    assert done.returncode != 0
    assert _expected_message(case, folder, name) in logs
    assert "Loading weights" not in logs and "load_state_dict" not in logs
    assert not list((tmp_path / "out").rglob("model.safetensors"))


@pytest.mark.parametrize("case", ["missing", "shape"])
def test_the_flow_model_stage_refuses_it_with_the_same_message(
    prefect_harness, broken_checkpoints, synthetic_data, tmp_path, case
):
    folder, name = broken_checkpoints[case]
    state = _failed_flow(tmp_path, model_name_or_path=str(folder), video_folder=str(synthetic_data))
    assert _expected_message(case, folder, name) in str(state.result(raise_on_failure=False))
    states = task_states(state.state_details.flow_run_id, expect=("model-setup",))
    assert states["model-setup"] == ["Failed"]
    assert not list((tmp_path / "out").rglob("plan.json"))


def test_worker_plan_mismatch_is_refused(tmp_path):
    """A plan whose recorded resolution differs from what this worker resolves is not trained."""
    from streamvln_model.training.worker import load_plan_arguments

    plan = {
        "flags": {"model_name_or_path": "x", "output_dir": str(tmp_path), "learning_rate": 1e-3},
        "worker_flags": {},
        "arguments": {"model": {}, "data": {}, "training": {"learning_rate": 2e-3}},
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(SystemExit, match=r"training\.learning_rate"):
        load_plan_arguments(path)


def test_flash_attention_is_substituted_as_a_default_and_refused_when_asked_for():
    """The published default falls back to sdpa on this CPU host; an explicit request fails in preflight."""
    from streamvln_model.config.arguments import resolve_argv, resolve_flags
    from streamvln_model.config.preflight import machine_plan

    default = machine_plan(resolve_flags({"output_dir": "out"}), "cpu")
    assert default.worker_flags["attn_implementation"] == "sdpa" and default.problems == []
    assert "flash_attention_2 needs flash-attn on CUDA (device cpu): sdpa" in default.substitutions[0]
    for arguments in (
        resolve_flags({"output_dir": "out", "attn_implementation": "flash_attention_2"}),
        resolve_argv(["--output_dir", "out", "--attn_implementation", "flash_attention_2"]),
    ):
        asked = machine_plan(arguments, "cpu")
        assert "attn_implementation" not in asked.worker_flags
        assert any(
            p.startswith("--attn_implementation flash_attention_2 needs flash-attn") for p in asked.problems
        )
