"""The shipped deployments as an operator runs them: a real `prefect server`, `streamvln deploy`,
a real `prefect worker` process, and a run triggered with `prefect deployment run`.

One module-scoped server and deployment serve every test here; only the tiny deployment trains
(synthetic data, tiny model, a few CPU steps), and it registers a model in the test MLflow server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import free_port, log_tail, start_service

pytestmark = pytest.mark.processes  # a Prefect server, worker and CLI in subprocesses

REPO_ROOT = Path(__file__).resolve().parents[1]
POOL = "streamvln-test"  # not the file's pool: `--pool` rewrites every deployment's pool
SERVER_STARTUP_TIMEOUT_S = 120
GROUPS = ("model", "data", "training", "launch", "tracking")


@dataclass(frozen=True)
class DeployedServer:
    api_url: str
    env: dict[str, str]  # what every Prefect client process here runs with
    deploy_output: str
    deploy_s: float


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedServer]:
    """A `prefect server start` of its own (own PREFECT_HOME, free port) with `streamvln deploy` applied."""
    root = tmp_path_factory.mktemp("prefect_server")
    port = free_port()
    server_env = {"PREFECT_HOME": str(root / "server"), "PREFECT_UI_ENABLED": "false"}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with start_service(
        "prefect server",
        command,
        health_url=f"http://127.0.0.1:{port}/api/health",
        log_path=root / "server.log",
        env=server_env,
        timeout=SERVER_STARTUP_TIMEOUT_S,
        cwd=root,
    ):
        api_url = f"http://127.0.0.1:{port}/api"
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(root / "client")}
        env.pop("STREAMVLN_CHECKOUT", None)  # the checkout is the folder deploy runs in
        started = time.monotonic()
        done = _cli(env, "-m", "flows.cli", "deploy", "--pool", POOL)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        yield DeployedServer(api_url, env, output, time.monotonic() - started)


@pytest.fixture
def api(deployed):
    """In-process Prefect clients talk to the module's server (not the session's test harness)."""
    import prefect.settings

    with prefect.settings.temporary_settings(updates={prefect.settings.PREFECT_API_URL: deployed.api_url}):
        yield


def _deployment(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _resolve(schema: dict, node: dict) -> dict:
    """`node` with a `$ref` (or an `allOf`/`anyOf` of one, as pydantic writes optionals) resolved."""
    for option in [node, *node.get("allOf", []), *node.get("anyOf", [])]:
        if "$ref" in option:
            return schema["definitions"][option["$ref"].rsplit("/", 1)[-1]]
    return node


def test_deploy_creates_the_pool_and_every_shipped_deployment(deployed, api):
    from prefect.client.orchestration import get_client

    from deployments.deploy import deployment_names, load_prefect_file

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(POOL)
    assert pool.type == "process"
    assert f"prefect worker start --pool {POOL}" in deployed.deploy_output
    names = {
        "stage-one": "streamvln-train",
        "stage-two": "streamvln-train",
        "nightly": "streamvln-retrain",
        "tiny-cpu": "streamvln-tiny",
    }
    assert set(deployment_names(load_prefect_file())) == set(names)
    for name, flow in names.items():
        deployment = _deployment(f"{flow}/{name}")
        assert deployment.work_pool_name == POOL, name
        # The worker runs the code of the checkout `streamvln deploy` ran in.
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
        ], name
    assert _deployment("streamvln-train/stage-one").parameters == {"preset": "stage_one"}
    assert _deployment("streamvln-train/stage-two").parameters == {"preset": "stage_two"}


def test_training_deployment_form_has_documented_parameter_groups(deployed, api):
    schema = _deployment("streamvln-train/stage-one").parameter_openapi_schema
    for group in GROUPS:
        section = _resolve(schema, schema["properties"][group])
        assert section.get("title") and section.get("description"), (group, section)
        fields = section["properties"]
        assert fields and all(field.get("title") for field in fields.values()), group
    model = _resolve(schema, schema["properties"]["model"])
    assert model["properties"]["model_name_or_path"]["description"]
    assert "stage_one" in str(schema["properties"]["preset"])  # the shipped presets are the choices


def test_retraining_deployment_has_its_nightly_cron_schedule(deployed, api):
    deployment = _deployment("streamvln-retrain/nightly")
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "UTC"
    assert schedule.active is False  # ships paused: its data folders are placeholders
    assert {"model_name", "video_folder", "eval_video_folder", "output_dir"} <= set(deployment.parameters)


def test_worker_runs_the_tiny_deployment_and_registers_a_model(deployed, api, mlflow_server, tmp_path):
    import mlflow

    from flows.tiny import TINY_TRACKING

    model_name = "streamvln-deployment-test"
    env = {
        **deployed.env,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,  # the worker's environment reaches each flow run
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(port := free_port()),
    }
    worker = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--with-healthcheck"]
    with start_service(
        "prefect worker",
        worker,
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp_path / "worker.log",
        env=env,
        timeout=60,
        cwd=tmp_path,  # not the checkout: the deployment's pull step must find it
    ) as service:
        tracking = TINY_TRACKING.model_copy(update={"model_name": model_name}).model_dump_json()
        run = _cli(
            env,
            "-m", "prefect", "deployment", "run", "streamvln-tiny/tiny-cpu",
            "--param", f"workdir={tmp_path / 'work'}",
            "--param", "episodes=2",
            "--param", "max_steps=2",
            "--param", f"tracking={tracking}",
            "--watch", "--watch-timeout", "240",
        )  # fmt: skip
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-3000:] + "\nworker log:\n" + log_tail(service.log_path, 80)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state.is_completed() and flow_run.work_pool_name == POOL
    assert flow_run.infrastructure_pid  # started by the worker, as a process of its own

    version = mlflow.MlflowClient(mlflow_server.uri).get_model_version_by_alias(model_name, "candidate")
    assert version.run_id
    work = tmp_path / "work"
    assert (work / "checkpoints" / "tiny-init" / "config.json").is_file()
    assert (work / "data" / "synthetic_r2r" / "annotations.json").is_file()
    assert len([p for p in (work / "runs").iterdir() if p.is_dir()]) == 1  # one isolated run folder


def test_deploy_refuses_an_unknown_deployment_name(tmp_path):
    done = _cli({**os.environ}, "-m", "flows.cli", "deploy", "--names", "stage-three", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "no deployment named 'stage-three'" in done.stderr and "tiny-cpu" in done.stderr
