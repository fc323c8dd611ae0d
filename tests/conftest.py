"""Session-wide test environment and fixtures that run REAL services on 127.0.0.1.

Fixtures (all session-scoped, started on first use, torn down at the end of the session):

* ``mlflow_server``   -> :class:`MlflowServer`: an ``mlflow server`` on SQLite that proxies
  artifacts (``mlflow-artifacts:/``), so clients need only ``.uri``.
* ``moto_s3``         -> :class:`MotoS3`: a ``moto_server`` S3 endpoint; ``.fs()`` gives s3fs.
* ``prefect_harness`` -> :class:`PrefectHarness`: Prefect's test harness (temporary API server
  and database) with ``PREFECT_HOME`` and result storage in a session temp dir.

Built on them:

* ``mlflow_tracking`` (function) -> the ``MlflowServer``, set as the tracking URI for this process
  and its subprocesses for one test (``tests.helpers.mlflow_tracking_at`` for wider scopes).
* ``finished_training`` (session) -> :class:`FinishedTraining`: the one shared 2-rank training.
* ``trained_models`` (session) -> ``tests.helpers.TrainedModels``: two 200-step models (slow tests).

Process start, readiness polling and teardown live in ``tests/services.py``; the test tiers
(``services``, ``processes``, ``slow``) are described in docs/TESTING.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import Service, free_port, start_service

REPO_ROOT = Path(__file__).resolve().parents[1]

# --- Session-wide environment (set before any test module imports HF / Prefect / MLflow) ----
# Tests never reach the network: no hub downloads, no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # MLflow honours DO_NOT_TRACK only when "true"
# Prefect's ephemeral server needs ~20-30 s on a 2-core machine; the default timeout is 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Persistent cache (e.g. the built Qwen2 tokenizer) that survives test sessions.
os.environ.setdefault("STREAMVLN_CACHE_DIR", str(REPO_ROOT / ".cache" / "streamvln"))

MLFLOW_STARTUP_TIMEOUT_S = 120.0
MOTO_STARTUP_TIMEOUT_S = 60.0
PREFECT_STARTUP_TIMEOUT_S = 120


# --- MLflow ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MlflowServer:
    uri: str  # http://127.0.0.1:PORT; the only thing a client needs
    artifact_root: Path  # where the server stores proxied artifacts (for assertions only)
    backend_store_uri: str
    service: Service


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow")
    artifact_root = root / "artifacts"
    artifact_root.mkdir()
    backend_store_uri = f"sqlite:///{root / 'mlflow.db'}"
    port = free_port()
    # No --default-artifact-root: with artifact serving (the default) new experiments get
    # mlflow-artifacts:/ locations, so uploads and downloads go through the server to
    # --artifacts-destination. A local --default-artifact-root would make clients write to
    # that path themselves.
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination", str(artifact_root),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    with start_service(
        "mlflow server",
        cmd,
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=root / "mlflow-server.log",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        timeout=MLFLOW_STARTUP_TIMEOUT_S,
        cwd=root,
    ) as service:
        yield MlflowServer(
            uri=f"http://127.0.0.1:{port}",
            artifact_root=artifact_root,
            backend_store_uri=backend_store_uri,
            service=service,
        )


# --- moto S3 -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MotoS3:
    endpoint_url: str
    service: Service
    key: str = "testing"
    secret: str = "testing"

    @property
    def storage_options(self) -> dict:
        """fsspec/datasets ``storage_options`` for this endpoint (no region_name: see fs())."""
        return {"key": self.key, "secret": self.secret, "client_kwargs": {"endpoint_url": self.endpoint_url}}

    def fs(self):
        """An s3fs filesystem on this endpoint.

        Do not add ``region_name``: bucket creation then fails with InvalidLocationConstraint.
        s3fs caches instances and directory listings; call ``fs.invalidate_cache()`` after
        writing through another client.
        """
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with start_service(
        "moto_server",
        cmd,
        health_url=f"http://127.0.0.1:{port}/moto-api/data.json",
        log_path=root / "moto-server.log",
        timeout=MOTO_STARTUP_TIMEOUT_S,
        cwd=root,
    ) as service:
        yield MotoS3(endpoint_url=f"http://127.0.0.1:{port}", service=service)


# --- Prefect -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefectHarness:
    api_url: str
    home: Path  # PREFECT_HOME for the session
    results_path: Path  # PREFECT_RESULTS_LOCAL_STORAGE_PATH for the session


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectHarness]:
    """Prefect's test harness, isolated from the developer's ``~/.prefect``.

    The harness only swaps the API database. Cache hits, however, are decided by the result
    files in result storage (default ``$PREFECT_HOME/storage``), so without this fixture's
    settings a result persisted by an earlier run on the same machine would turn a first call
    into ``Cached``. The settings are entered before the harness so that its server subprocess
    inherits them too.
    """
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect_home")
    results_path = home / "storage"
    results_path.mkdir()
    with (
        prefect.settings.temporary_settings(
            updates={
                prefect.settings.PREFECT_HOME: home,
                prefect.settings.PREFECT_RESULTS_LOCAL_STORAGE_PATH: results_path,
                prefect.settings.PREFECT_SERVER_ANALYTICS_ENABLED: False,
            }
        ),
        prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_TIMEOUT_S),
    ):
        yield PrefectHarness(
            api_url=prefect.settings.PREFECT_API_URL.value(),
            home=home,
            results_path=results_path,
        )


# --- Synthetic inputs shared by the flow / CLI tests (read-only: copy before editing) ----------
@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny StreamVLN checkpoint (~8 s to write), shared by the whole session."""
    from streamvln_model.synthetic.checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "ckpt")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic episodes (20-70 steps) in the published layout; copy it before editing."""
    from streamvln_model.synthetic import write_trajectories

    out = tmp_path_factory.mktemp("synthetic_data") / "data"
    write_trajectories(out, episodes=6, min_steps=20, max_steps=70)
    return out


# --- MLflow tracking for one test ----------------------------------------------------------------
@pytest.fixture
def mlflow_tracking(mlflow_server) -> Iterator[MlflowServer]:
    """The session's MLflow server as this process's tracking URI and as MLFLOW_TRACKING_URI (for
    the flow's workers and subprocesses); both restored after the test. Module- and
    session-scoped fixtures use `tests.helpers.mlflow_tracking_at` directly."""
    from tests.helpers import mlflow_tracking_at

    with mlflow_tracking_at(mlflow_server.uri):
        yield mlflow_server


# --- One real 2-rank training, shared by the tests that look at a finished run ------------------
HUB_TOKEN_CANARY = "hf_CANARYc4n4ry0123456789abcdefXYZ"  # a --hub_token no file may ever hold


@dataclass(frozen=True)
class FinishedTraining:
    """`streamvln demo`'s training (flows.demo.run_demo) as the session ran it; see the fixture."""

    flow_run_id: str
    mlflow_run_id: str
    tracking_uri: str
    model_uri: str
    model_name: str
    model_version: str
    output_dir: str  # the run folder (<request output_dir>/<flow run name>)
    data_fingerprint: str
    world_size: int
    steps: int
    max_steps: int  # what the preset asked for
    save_steps: int  # a checkpoint-<save_steps> folder holds the Trainer's pickled training_args.bin
    workdir: Path  # the demo's folder: data, checkpoint, plans, runs
    video_folder: Path
    hub_token: str


@pytest.fixture(scope="session")
def finished_training(prefect_harness, mlflow_server, tmp_path_factory) -> FinishedTraining:
    """The demo's training (`flows.demo.run_demo`: its synthetic data and tiny checkpoint, the tiny
    CPU preset, 2 DDP ranks through torchrun) through the real flow on the test servers, once per
    session: the e2e, secrets, run-artifacts and screenshot tests all read this one run.

    Two settings are added to the demo's preset, each for one reader: `--hub_token` (a canary
    tests/test_secrets.py looks for in every file) and a checkpoint at the last step (whose
    pickled `training_args.bin` the canary must not reach either). The plan root is fresh, so
    every stage ran (no cache hit) and published its artifacts into this flow run. The experiment
    exists on the server beforehand, so artifacts go through the server like every flow run's.
    Read-only for the tests that use it.
    """
    import mlflow
    import yaml

    from flows import demo
    from tests.helpers import mlflow_tracking_at

    workdir = tmp_path_factory.mktemp("finished_training")
    preset = yaml.safe_load(demo.DEMO_PRESET.read_text())
    max_steps = preset["training"]["max_steps"]
    preset["training"] |= {"hub_token": HUB_TOKEN_CANARY, "save_strategy": "steps", "save_steps": max_steps}
    patched = workdir / "demo_preset.yaml"
    patched.write_text(yaml.safe_dump(preset))
    environment = dict(os.environ)  # run_demo sets defaults for an embedded Prefect and MLflow
    try:
        with mlflow_tracking_at(mlflow_server.uri), pytest.MonkeyPatch.context() as patch:
            patch.setitem(demo.STAGE_PRESETS, "one", patched)
            client = mlflow.MlflowClient(mlflow_server.uri)
            if client.get_experiment_by_name("streamvln-demo") is None:
                client.create_experiment("streamvln-demo")
            result = demo.run_demo(workdir / "demo", episodes=16, nproc=2)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return FinishedTraining(
        **{name: result[name] for name in ("flow_run_id", "mlflow_run_id", "tracking_uri", "model_uri")},
        model_name="streamvln-demo",
        model_version=result["model_version"],
        output_dir=result["output_dir"],
        data_fingerprint=result["data_fingerprint"],
        world_size=result["world_size"],
        steps=result["steps"],
        max_steps=max_steps,
        save_steps=max_steps,
        workdir=Path(result["workdir"]),
        video_folder=Path(result["workdir"]) / "data" / "synthetic_r2r",
        hub_token=HUB_TOKEN_CANARY,
    )


# --- The promotion and pull tests' two trained models ---------------------------------------------
@pytest.fixture(scope="session")
def trained_models(tiny_checkpoint, tmp_path_factory):
    """Held-out data and two models trained from the tiny checkpoint (true and shuffled actions,
    200 steps each, in this process): `tests.helpers.TrainedModels`."""
    from tests.helpers import build_trained_models

    return build_trained_models(tiny_checkpoint, tmp_path_factory.mktemp("promotion-models"))


# --- Test tiers ----------------------------------------------------------------------------------
# A test that uses one of these fixtures talks to a real server (or a training that did): it is
# marked `services` here, so no module has to remember to. `scripts/test.sh --fast` runs what is
# neither `services` nor `processes` (torchrun, the CLI or a flow in subprocesses) nor `slow`.
SERVICE_FIXTURES = frozenset({"mlflow_server", "moto_s3", "prefect_harness", "finished_training"})


# Session trainings several modules read. Under pytest-xdist (`scripts/test.sh` runs the whole
# suite on 2 workers) each module runs on one worker, and the modules that read one of these
# trainings share a worker, or each worker would train it again. Listed longest first: they are
# collected first, so they start at once and neither worker ends the run alone on one.
SHARED_TRAININGS = ("finished_training", "trained_models")


def module_groups(tests_dir: Path = Path(__file__).parent) -> dict[str, str]:
    """`tests/test_x.py` -> the shared training it reads (by name in its source), for the modules
    that read one; the others are their own group. The controller sees only node ids, so the
    grouping is decided from the files."""
    groups = {}
    for module in sorted(tests_dir.glob("test_*.py")):
        source = module.read_text()
        shared = next((name for name in SHARED_TRAININGS if name in source), None)
        if shared:
            groups[f"{tests_dir.name}/{module.name}"] = shared
    return groups


@pytest.hookimpl(optionalhook=True)  # an xdist hook: defined only where pytest-xdist is installed
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadscope`, with a module (not a class) as the unit, and the modules that read one
    shared training as one unit. (xdist's own `xdist_group` marks are not applied under pytest 9:
    xdist 3.8 writes the group into `item._nodeid`, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    groups = module_groups()

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return groups.get(module, module)

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `services`; collect the modules that read a shared training first (stable sort)."""
    for item in items:
        if SERVICE_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.services)
    groups = module_groups()
    rank = {name: i for i, name in enumerate(SHARED_TRAININGS)}
    items.sort(key=lambda item: rank.get(groups.get(item.nodeid.split("::", 1)[0], ""), len(rank)))
