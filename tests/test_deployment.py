"""A served deployment runs the flow when triggered (what the Prefect UI's Run button does)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from tests.helpers import TINY_PRESET, task_states

REPO_ROOT = Path(__file__).resolve().parents[1]


def _wait_for_deployment(name: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert server.poll() is None, "deployments.serve exited early"
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:
                time.sleep(1)
    raise TimeoutError(f"deployment {name} not registered within {timeout_s} s")


def test_served_deployment_runs_the_flow_with_preset_parameters(
    prefect_harness, tiny_checkpoint, synthetic_data, tmp_path
):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "request": {
                    **yaml.safe_load(TINY_PRESET.read_text())["request"],
                    "model_name_or_path": str(tiny_checkpoint),
                    "video_folder": str(synthetic_data),
                    "output_dir": str(tmp_path / "out"),
                },
                "launch": {"device": "cpu"},
            }
        )
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness.api_url,
        "PREFECT_HOME": str(prefect_harness.home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_harness.results_path),
    }
    command = [sys.executable, "-m", "deployments.serve", "--name", "ci", "--config", str(preset)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_deployment("streamvln-train/ci", server)
        flow_run = run_deployment(
            "streamvln-train/ci",
            parameters={"plan_only": True, "plan_root": str(tmp_path / "plans")},
            timeout=300,
        )
        assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log").read_text()[-3000:])
        assert flow_run.parameters["request"]["video_folder"] == str(synthetic_data)
        states = task_states(flow_run.id, expect=("data-module", "trainer-initialization"))
        assert states["data-module"] and states["trainer-initialization"] == ["Completed"]
        assert (tmp_path / "out" / "plan.json").is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
