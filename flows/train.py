"""The `streamvln-train` flow: the training flowchart, one task per stage, top to bottom.

(No `from __future__ import annotations` here: Prefect builds the UI form and validates
parameters from the runtime annotations of the flow function.)

Planning stages (arguments .. data) are cheap, cached and keyed on content; the training loop
runs in torchrun workers that read the plan; the saving stage registers the model in MLflow.
Each flow run trains into its own run folder, locked for its lifetime; `resume_from` continues
an earlier run's folder, checkpoints and MLflow run.
"""

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field, SecretStr

from flows.presets import with_preset
from streamvln_model.config.secrets import split_secrets
from streamvln_model.data.index.folder import index_exists
from streamvln_model.model.tokenizer import cache_root
from streamvln_model.registry.models import is_registry_uri
from tasks.arguments import resolve_arguments
from tasks.data import build_data_module, data_settings
from tasks.environment import setup_environment
from tasks.gradients import plan_gradients
from tasks.memory import plan_run_memory, show_memory_plan
from tasks.model import fetch_model, plan_model
from tasks.parameters import (
    DataOptions,
    LaunchConfig,
    ModelOptions,
    PresetName,
    TrackingConfig,
    TrainingOptions,
    TrainRequest,
)
from tasks.reporting import log_dataset_inputs, publish_loss_curve, publish_mlflow_link, publish_parameters
from tasks.run_folder import ClaimedFolder, claim_run_folder
from tasks.saving import save_model
from tasks.secrets import load_secret_blocks
from tasks.tokenizer import setup_tokenizer
from tasks.tracking import close_run, log_plan, open_run, tracking_uri
from tasks.trainer_init import checkpoint_step, write_trainer_plan
from tasks.training import training_loop
from tasks.types import Plans, TrainerPlan
from tasks.vision import setup_vision


class TrainFlowResult(BaseModel):
    flow_run_id: str
    output_dir: str
    plan_path: str | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    model_uri: str | None = None
    model_version: str | None = None
    registered: bool = False
    skipped_reason: str | None = Field(
        default=None, description="Why nothing trained or nothing was registered"
    )
    resumed_from_step: int | None = None
    steps: int | None = None
    world_size: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    data_fingerprint: str | None = None


def plan_run(request: TrainRequest, launch: LaunchConfig, plan_root: str, index_root: str | None) -> Plans:
    """Stages 1-7 of the flowchart: arguments .. data module. Every problem surfaces here, before a
    run folder, an MLflow run or a GPU is touched; a second call with the same inputs is all cache."""
    arguments = resolve_arguments(request)
    environment = setup_environment(arguments, launch)
    model_plan = plan_model(arguments)
    tokenizer = setup_tokenizer(arguments)
    vision = setup_vision(model_plan)  # sizes come from the tower in the checkpoint
    gradients = plan_gradients(arguments, model_plan)
    memory = plan_run_memory(arguments, environment, model_plan)  # fits, or the cheapest fix
    show_memory_plan(memory)
    settings = data_settings(arguments, vision)
    data_plan = build_data_module(settings, plan_root, index_root)  # every sample checked before any GPU
    if not index_exists(data_plan.index_path):  # a cached plan whose index was deleted since
        data_plan = build_data_module.with_options(refresh_cache=True)(settings, plan_root, index_root)
    return Plans(arguments, environment, model_plan, tokenizer, vision, gradients, memory, data_plan)


def secret_environment(request: TrainRequest) -> dict[str, SecretStr]:
    """Secrets typed into the request, as the environment variables the workers read them from."""
    return {name: SecretStr(value) for name, value in split_secrets(request.flags())[1].items()}


def default_plan_root() -> str:
    return str(cache_root() / "plans")


@flow(name="streamvln-train")
def streamvln_train(
    model: ModelOptions | None = None,
    data: DataOptions | None = None,
    training: TrainingOptions | None = None,
    launch: LaunchConfig | None = None,
    tracking: TrackingConfig | None = None,
    preset: PresetName | None = None,
    resume_from: str | None = None,
    plan_only: bool = False,
    train_retries: Annotated[int, Field(ge=0, le=20)] = 2,
    plan_root: str | None = None,
    index_root: str | None = None,
) -> TrainFlowResult:
    """Train StreamVLN: plan (cached), launch torchrun, register the model in MLflow.

    Args:
        model: The checkpoint to start from (a folder or models:/name@alias) and what trains.
        data: Trajectory folders, history and co-training data.
        training: Optimisation, schedule, precision, checkpoints; output_dir is the output root:
            each run trains into <output_dir>/<flow run name>.
        launch: How torchrun starts the workers: processes, nodes, rendezvous, DeepSpeed, limits.
        tracking: MLflow experiment, registered model name, and the alias the new version gets.
        preset: A shipped recipe (configs/) that fills every group; a field set above wins.
        resume_from: Continue an earlier run instead of starting a new one: its folder name or
            path, its flow-run or MLflow run id, or "latest". A finished run trains nothing.
        plan_only: Stop after Trainer Initialization: everything checked and indexed, nothing trained.
        train_retries: Relaunches of a training killed by a fault (a rank or node lost); each
            resumes from the newest complete checkpoint into the same MLflow run.
        plan_root: Where cached plans and data indexes go (default ~/.cache/streamvln/plans).
        index_root: Where data indexes go instead, e.g. s3://bucket/indexes, shared by nodes.
    """
    load_secret_blocks()
    request, launch, tracking = with_preset(
        preset, {"model": model, "data": data, "training": training}, launch, tracking
    )
    plan_root = plan_root or default_plan_root()
    model_source = None
    if is_registry_uri(request.model_name_or_path):  # downloaded once into the local cache
        request, model_source = fetch_model(request)

    plans = plan_run(request, launch, plan_root, index_root)
    arguments, data_plan = plans.arguments, plans.data
    publish_parameters({"model": arguments.model, "data": arguments.data, "training": arguments.training})

    folder = claim_run_folder(arguments.flags["output_dir"], resume_from)
    try:
        result = TrainFlowResult(
            flow_run_id=str(flow_run.get_id()),
            output_dir=str(folder.path),
            data_fingerprint=data_plan.fingerprint,
        )
        if folder.record.finished:
            return _nothing_to_do(result, folder, "this run finished already")
        trainer_plan = write_trainer_plan(plans, launch, run_dir=str(folder.path))
        result.plan_path = trainer_plan.plan_path
        result.resumed_from_step = checkpoint_step(trainer_plan.resume_from)
        if plan_only:
            folder.record.status = "planned"  # resumable: a later run with resume_from trains it
            folder.save()
            return result
        _train_and_register(request, launch, tracking, plans, trainer_plan, folder, result, train_retries,
                            model_source)  # fmt: skip
        return result
    finally:
        folder.release()


def _nothing_to_do(result: TrainFlowResult, folder: ClaimedFolder, reason: str) -> TrainFlowResult:
    record = folder.record
    result.skipped_reason = f"{reason}: nothing trained, nothing registered"
    result.mlflow_run_id, result.tracking_uri = record.mlflow_run_id, record.tracking_uri
    result.model_uri, result.model_version, result.steps = (
        record.model_uri,
        record.registered_version,
        record.final_step,
    )
    get_run_logger().info("%s (run folder %s)", result.skipped_reason, folder.path)
    return result


def _train_and_register(
    request: TrainRequest,
    launch: LaunchConfig,
    tracking: TrackingConfig,
    plans: Plans,
    trainer_plan: TrainerPlan,
    folder: ClaimedFolder,
    result: TrainFlowResult,
    train_retries: int,
    model_source: str | None,
) -> None:
    """Open (or reopen) the MLflow run, train with retries, register unless nothing trained."""
    record, arguments, data_plan = folder.record, plans.arguments, plans.data
    reopened = record.mlflow_run_id
    run_id = open_run(tracking.experiment_name, arguments, existing_run_id=reopened, run_dir=str(folder.path))
    record.mlflow_run_id, record.tracking_uri = run_id, tracking_uri()
    folder.save()  # from here on a rerun of this folder continues this MLflow run
    result.mlflow_run_id, result.tracking_uri = run_id, record.tracking_uri
    publish_mlflow_link(run_id, record.tracking_uri)
    succeeded = False
    try:
        if not reopened:
            log_plan(
                run_id, arguments, data_plan, plans.gradients, trainer_plan.plan_path,
                memory=plans.memory, model_source=model_source,
            )  # fmt: skip
            log_dataset_inputs(
                run_id, data_plan.fingerprint, data_plan.summary["sources"], data_plan.summary["samples"]
            )
        trained = training_loop.with_options(retries=train_retries)(
            trainer_plan, run_id, record.tracking_uri, launch.timeout_s, secret_environment(request)
        )
        result.steps, result.world_size = trained.steps, trained.world_size
        result.first_loss, result.last_loss = trained.first_loss, trained.last_loss
        record.final_step = trained.steps
        if trained.losses:
            publish_loss_curve(run_id, trained.losses, record.tracking_uri)
        if trained.steps <= (result.resumed_from_step or 0):
            result.skipped_reason = (
                f"the resumed checkpoint was at step {result.resumed_from_step}, the last one: "
                "nothing trained, nothing registered"
            )
            get_run_logger().info(result.skipped_reason)
        else:
            saved = save_model(trained, run_id, tracking, data_plan)
            result.model_uri, result.model_version, result.registered = saved.model_uri, saved.version, True
            record.registered_version, record.model_uri = saved.version, saved.model_uri
        succeeded = True
    finally:
        record.status = "finished" if succeeded else "failed"
        folder.save()
        close_run(run_id, succeeded)
