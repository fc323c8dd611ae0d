"""The `streamvln-tiny` flow: the whole pipeline on a CPU in about a minute, for trying a deployment.

It writes synthetic episodes and a random-init tiny checkpoint into `workdir` (once: a second
run reuses them), then runs `streamvln-train` as a subflow with the `tiny` preset on the CPU.
What it proves is the deployment path itself: a worker picked the run up, found the code,
trained, tracked and registered a model, with nothing on the machine but this checkout.

(No `from __future__ import annotations`: Prefect builds the Run form from the annotations.)
"""

from pathlib import Path
from typing import Annotated

from prefect import flow, task
from pydantic import Field

from flows.demo import demo_data
from flows.train import TrainFlowResult, streamvln_train
from tasks.parameters import DataOptions, LaunchConfig, ModelOptions, TrackingConfig, TrainingOptions

TINY_TRACKING = TrackingConfig(experiment_name="streamvln-tiny", model_name="streamvln-tiny")


@task(name="synthetic-inputs")
def synthetic_inputs(workdir: Path, episodes: int, seed: int) -> tuple[str, dict[str, str]]:
    """(checkpoint folder, data flags): written on the first run in `workdir`, reused after."""
    from streamvln_model.synthetic.checkpoint import write_checkpoint

    checkpoint = workdir / "checkpoints" / "tiny-init"
    if not (checkpoint / "config.json").is_file():
        write_checkpoint(checkpoint, preset="tiny", seed=seed, overwrite=True)
    return str(checkpoint), demo_data(workdir, "one", episodes, seed)


@flow(name="streamvln-tiny")
def streamvln_tiny(
    workdir: str = "work/tiny",
    episodes: Annotated[int, Field(ge=1)] = 4,
    max_steps: Annotated[int, Field(ge=1)] = 4,
    nproc_per_node: Annotated[int, Field(ge=1, le=8)] = 1,
    tracking: TrackingConfig = TINY_TRACKING,
    seed: int = 0,
) -> TrainFlowResult:
    """Train the tiny model on synthetic data through `streamvln-train` (preset `tiny`, CPU).

    Args:
        workdir: Synthetic data, checkpoint, plans and run folders go here; a relative path is
            taken from the checkout the deployment runs in.
        episodes: Synthetic episodes written on the first run in `workdir`.
        max_steps: Optimizer steps to train.
        nproc_per_node: torchrun CPU processes.
        tracking: MLflow experiment, registered model and alias of the trained model.
        seed: Seed of the synthetic data and the initial weights.
    """
    root = Path(workdir).resolve()
    checkpoint, data_flags = synthetic_inputs(root, episodes, seed)
    return streamvln_train(
        model=ModelOptions(model_name_or_path=checkpoint),
        data=DataOptions(**data_flags),
        training=TrainingOptions(output_dir=str(root / "runs"), max_steps=max_steps),
        launch=LaunchConfig(device="cpu", nproc_per_node=nproc_per_node),
        tracking=tracking,
        preset="tiny",
        plan_root=str(root / "plans"),
    )
