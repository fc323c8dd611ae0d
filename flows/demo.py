"""`streamvln demo`: synthetic data + tiny checkpoint through the real flow, embedded services.

Prefect runs in its ephemeral mode (a temporary local server; state under <workdir>/.prefect)
and MLflow tracks into <workdir>/mlflow.db with artifacts in <workdir>/mlartifacts, unless
PREFECT_API_URL / MLFLOW_TRACKING_URI point elsewhere.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# The training settings are the tiny CPU preset users run by hand (`streamvln train`); the demo
# only swaps in its own data, checkpoint, output folder and process count.
DEMO_PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


# Prefect's embedded (ephemeral) server, for every command that runs the flow without
# PREFECT_API_URL. Its default 20 s startup timeout is too short on a loaded 2-core machine,
# where the server needs 20-30 s; with a server configured these settings change nothing.
EMBEDDED_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_LEVEL": "INFO",
}


def configure_embedded(workdir: Path | None = None) -> None:
    """Defaults for running the flow with embedded services; what the environment sets wins.

    Call before Prefect/MLflow are imported: they read their settings at import time. With a
    `workdir` (the demo), Prefect's state, MLflow tracking and the offline switches go there
    too; without one (`streamvln train`), they stay where the README's table says.
    """
    settings = dict(EMBEDDED_PREFECT)
    if workdir is not None:
        workdir = workdir.resolve()
        settings |= {
            "PREFECT_HOME": str(workdir / ".prefect"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "HF_HUB_OFFLINE": "1",
        }
    for name, value in settings.items():
        os.environ.setdefault(name, value)


def prefect_ui_command() -> str:
    """How to browse the flow runs: the configured server, or the embedded state in PREFECT_HOME."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value():
        return f"open {PREFECT_API_URL.value().removesuffix('/api')}"
    return f"PREFECT_HOME={PREFECT_HOME.value()} prefect server start"


def ensure_experiment(name: str, artifact_root: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=artifact_root.resolve().as_uri())


def loss_history(run_id: str) -> list[tuple[int, float]]:
    """Per-step loss as MLflow stored it (what the UI plots)."""
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]


# `--stage two` co-trains on all four data kinds with the tiny stage-two preset.
STAGE_PRESETS = {"one": DEMO_PRESET, "two": DEMO_PRESET.with_name("tiny_stage_two.yaml")}


def demo_data(workdir: Path, stage: str, episodes: int, seed: int) -> dict[str, str]:
    """Synthetic data for the stage (written once per workdir) and the flags that point at it."""
    from streamvln_model.synthetic import write_trajectories
    from streamvln_model.synthetic.mixture import write_mixture

    if stage == "one":
        data = workdir / "data" / "synthetic_r2r"
        if not (data / "annotations.json").exists():
            write_trajectories(data, episodes=episodes, min_steps=20, max_steps=90, seed=seed)
        return {"video_folder": str(data)}
    data = workdir / "data" / "stage_two"
    if (data / "mixture.yaml").exists():
        from streamvln_model.synthetic.mixture import training_flags

        return training_flags(lambda relative: str(data / relative))
    return write_mixture(data, seed=seed, episodes=episodes).flags


def run_demo(workdir: Path, episodes: int = 16, nproc: int = 2, seed: int = 0, stage: str = "one") -> dict:
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    configure_embedded(workdir)
    from flows.presets import preset_parameters
    from flows.train import streamvln_train
    from streamvln_model.synthetic.checkpoint import write_checkpoint
    from tasks.parameters import LaunchConfig, TrackingConfig, TrainRequest

    checkpoint = workdir / "checkpoints" / "tiny-init"
    data_flags = demo_data(workdir, stage, episodes, seed)
    if not (checkpoint / "config.json").exists():
        write_checkpoint(checkpoint, preset="tiny", seed=seed)
    tracking = TrackingConfig(
        experiment_name="streamvln-demo", model_name="streamvln-demo", alias="candidate"
    )
    ensure_experiment(tracking.experiment_name, workdir / "mlartifacts")
    preset = preset_parameters(STAGE_PRESETS[stage])
    request = TrainRequest(
        **{
            **preset["request"],
            **data_flags,
            "model_name_or_path": str(checkpoint),
            "output_dir": str(workdir / "runs" / time.strftime(f"demo-stage-{stage}-%Y%m%d-%H%M%S")),
        }
    )
    result = streamvln_train(
        **request.groups(),
        launch=LaunchConfig(**{**preset["launch"], "nproc_per_node": nproc}),
        tracking=tracking,
        plan_root=str(workdir / "plans"),
    )
    losses = loss_history(result.mlflow_run_id)
    return {
        **result.model_dump(),
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "logged_steps": len(losses),
        "mlflow_ui": f"mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}",
        "prefect_ui": prefect_ui_command(),
        "workdir": str(workdir),
    }
