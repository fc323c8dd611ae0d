"""The flow process never holds the model's weights: its peak memory does not grow with them.

The whole flow (planning, training 1 step in one torchrun process, the worker's save and reload
check, the saving stage's header check, the pyfunc logged from files, registration into a real
MLflow server) runs in a subprocess that prints its own peak RSS (`ru_maxrss` of RUSAGE_SELF:
torchrun and its worker are children and not counted). It runs once with the tiny checkpoint and
once with the "small" preset, ~10x the weight bytes: had the flow used the weights, its peak
would grow by at least the difference. transformers 5 memory-maps safetensors lazily, so a bare
`from_pretrained` (what the saving stage once did) hardly shows in RSS until the weights are
touched; the subprocess therefore also counts `from_pretrained` calls, and there must be none.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from streamvln_model.checkpoint.layout import TOWER_DIRNAME
from streamvln_model.registry import pyfunc as mlflow_model
from tests.helpers import service_env

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_PRESET = REPO_ROOT / "configs" / "tiny_cpu.yaml"
RESULT_PREFIX = "FLOW_RESULT "

# Runs the real flow; argv[1] = JSON {preset, request overrides, registry, plan_root}.
FLOW_RUN = r"""
import json, resource, sys
from transformers import PreTrainedModel

# transformers 5 memory-maps safetensors lazily, so a `from_pretrained` whose weights are never
# used barely moves RSS: count the calls too (none is expected in the flow process).
weight_loads = []
original = PreTrainedModel.from_pretrained.__func__

def counted(cls, *args, **kwargs):
    weight_loads.append(cls.__name__)
    return original(cls, *args, **kwargs)

PreTrainedModel.from_pretrained = classmethod(counted)

from flows.presets import preset_parameters
from flows.train import streamvln_train
from tasks.parameters import LaunchConfig, TrackingConfig, TrainRequest

spec = json.loads(sys.argv[1])
preset = preset_parameters(spec["preset"])
result = streamvln_train(
    **TrainRequest(**{**preset["request"], **spec["request"]}).groups(),
    launch=LaunchConfig(nproc_per_node=1, device="cpu"),
    tracking=TrackingConfig(**spec["tracking"]),
    plan_root=spec["plan_root"],
)
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # this process only, KiB on Linux
summary = {
    "peak_rss_kib": peak_kib,
    "weight_loads": weight_loads,
    "model_uri": result.model_uri,
    "steps": result.steps,
}
print("FLOW_RESULT " + json.dumps(summary))
"""

WRITE_CHECKPOINT = r"""
import sys
from streamvln_model.synthetic.checkpoint import write_checkpoint
write_checkpoint(sys.argv[1], preset=sys.argv[2])
"""


def weight_bytes(checkpoint: Path) -> int:
    return sum(path.stat().st_size for path in checkpoint.glob("*.safetensors"))


def run_flow(name: str, checkpoint: Path, data: Path, root: Path, env: dict[str, str]) -> dict:
    spec = {
        "preset": str(TINY_PRESET),
        "request": {
            "model_name_or_path": str(checkpoint),
            "video_folder": str(data),
            "output_dir": str(root / name / "out"),
            "max_steps": 1,
            "save_strategy": "no",
        },
        "tracking": {"experiment_name": f"flow-memory-{name}", "model_name": f"flow-memory-{name}"},
        "plan_root": str(root / name / "plans"),  # no cache hits between the two runs: same work
    }
    done = subprocess.run(
        [sys.executable, "-c", FLOW_RUN, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env=env,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith(RESULT_PREFIX))
    return json.loads(line[len(RESULT_PREFIX) :])


@pytest.mark.slow
def test_flow_peak_memory_does_not_grow_with_the_weights(
    prefect_harness, mlflow_server, tiny_checkpoint: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    small = tmp_path / "small-ckpt"
    done = subprocess.run(
        [sys.executable, "-c", WRITE_CHECKPOINT, str(small), "small"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tiny_bytes, small_bytes = weight_bytes(tiny_checkpoint), weight_bytes(small)
    assert small_bytes > 8 * tiny_bytes

    env = service_env(prefect_harness, mlflow_server)
    tiny = run_flow("tiny", tiny_checkpoint, synthetic_data, tmp_path, env)
    larger = run_flow("small", small, synthetic_data, tmp_path, env)
    assert tiny["steps"] == larger["steps"] == 1
    assert tiny["weight_loads"] == larger["weight_loads"] == []
    assert tiny["model_uri"] and larger["model_uri"]

    growth = (larger["peak_rss_kib"] - tiny["peak_rss_kib"]) * 1024
    weight_growth = small_bytes - tiny_bytes
    mib = 2**20
    print(
        f"\nflow peak RSS: tiny {tiny['peak_rss_kib'] / 1024:.0f} MiB (weights {tiny_bytes / mib:.0f} MiB), "
        f"small {larger['peak_rss_kib'] / 1024:.0f} MiB (weights {small_bytes / mib:.0f} MiB): "
        f"growth {growth / mib:.0f} MiB for {weight_growth / mib:.0f} MiB more weights"
    )
    assert growth < 0.1 * weight_growth


def test_pyfunc_is_logged_from_files_without_loading_the_model(
    mlflow_tracking, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """mlflow must not call `load_context` (which loads the weights) while logging."""

    def refuse(self, context) -> None:
        raise AssertionError("load_context was called at log time")

    monkeypatch.setattr(mlflow_model.StreamVLNPyfunc, "load_context", refuse)
    client = mlflow.MlflowClient(mlflow_tracking.uri)
    experiment = client.get_experiment_by_name("pyfunc-from-files") or client.get_experiment(
        client.create_experiment("pyfunc-from-files")
    )
    run = client.create_run(experiment.experiment_id)
    info = mlflow_model.log_checkpoint_model(tiny_checkpoint, run.info.run_id)
    client.set_terminated(run.info.run_id)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_path)))
    checkpoint = mlflow_model.checkpoint_path(local)
    assert (checkpoint / "model.safetensors").is_file()
    assert (checkpoint / TOWER_DIRNAME / "config.json").is_file()
    assert json.loads((checkpoint / "tokenizer_config.json").read_text())["additional_special_tokens"]
