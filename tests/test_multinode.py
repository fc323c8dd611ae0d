"""Multi-node launch: two torchrun "nodes" (two launchers on this host, one rendezvous) train one
run; a rendezvous that never forms fails within its timeout naming the endpoint; under Slurm the
launch goes through `srun` on every node of the allocation."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect import flow

from tasks.parameters import LaunchConfig
from tasks.trainer_init import torchrun_command
from tasks.training import TrainingFailed, run_streaming, worker_env
from tests.helpers import train_flow
from tests.services import free_port


@pytest.mark.processes  # torchrun
def test_a_rendezvous_that_cannot_form_fails_within_its_timeout_naming_the_endpoint(
    prefect_harness, tmp_path
):
    endpoint = f"127.0.0.1:{free_port()}"
    launch = LaunchConfig(nnodes=2, rdzv_endpoint=endpoint, rdzv_timeout_s=10, device="cpu")
    command = torchrun_command(launch, tmp_path / "plan.json")  # node 0 only: node 1 never comes

    @flow
    def launch_one_node() -> None:
        run_streaming(command, worker_env(None, None), tmp_path / "train.log", timeout_s=120)

    started = time.monotonic()
    state = launch_one_node(return_state=True)
    elapsed = time.monotonic() - started
    with pytest.raises(TrainingFailed, match=f"the rendezvous at {endpoint} did not form within 10 s"):
        state.result()
    assert elapsed < 60, elapsed  # the 10 s join timeout plus torchrun's start, not the 120 s limit


def test_srun_launches_torchrun_on_every_node_of_the_allocation(tmp_path, monkeypatch):
    launch = LaunchConfig(launcher="srun", nnodes=4, nproc_per_node=8, rdzv_endpoint="gpu-001:29500")
    command = torchrun_command(launch, tmp_path / "plan.json")
    assert command[:5] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1", sys.executable]
    assert "--nnodes=4" in command and "--rdzv_endpoint=gpu-001:29500" in command
    assert "--rdzv_conf=join_timeout=900" in command and command[-2:] == [
        "--plan",
        str(tmp_path / "plan.json"),
    ]
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    with pytest.raises(
        ValueError, match=r"inside a Slurm allocation .* Fix: start the Prefect worker inside sbatch"
    ):
        torchrun_command(launch.model_copy(update={"rdzv_endpoint": None}), tmp_path / "plan.json")


def test_two_nodes_join_one_rendezvous_and_train_one_run(
    prefect_harness, mlflow_tracking, tiny_checkpoint, synthetic_data, tmp_path
):
    """The flow launches node 0; "node 1" runs the command the flow logged, on the same plan.json
    (a shared file system), as an operator or a Slurm step would on the second machine."""
    endpoint = f"127.0.0.1:{free_port()}"
    launch = LaunchConfig(device="cpu", nnodes=2, rdzv_endpoint=endpoint, rdzv_timeout_s=120)
    second_node: list[subprocess.CompletedProcess] = []

    def start_second_node() -> None:
        deadline = time.monotonic() + 300
        while not (plans := list((tmp_path / "runs").glob("*/plan.json"))) and time.monotonic() < deadline:
            time.sleep(0.5)
        command, root = torchrun_command(launch, plans[0]), Path(__file__).resolve().parents[1]
        second_node.append(subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root))

    node = threading.Thread(target=start_second_node)
    node.start()
    result = train_flow(
        model_name_or_path=str(tiny_checkpoint), video_folder=str(synthetic_data),
        output_dir=str(tmp_path / "runs"), max_steps=2, logging_steps=1, save_strategy="no",
        launch=launch, tracking="multinode", plan_root=tmp_path / "plans",
    )  # fmt: skip
    node.join(timeout=120)
    assert second_node and second_node[0].returncode == 0, (
        second_node[0].stdout[-3000:] if second_node else None
    )
    assert result.world_size == 2 and result.steps == 2 and result.registered
    assert "world size 2" in second_node[0].stdout + Path(result.output_dir, "train.log").read_text()
