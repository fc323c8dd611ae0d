"""The `streamvln-train` flow: the training flowchart, one task per stage, top to bottom.

(No `from __future__ import annotations` here: Prefect builds the UI form and validates
parameters from the runtime annotations of the flow function.)

Planning stages (arguments .. data) are cheap, cached and keyed on content; the training loop
runs in torchrun workers that read the plan; the saving stage registers the model in MLflow.
"""

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel, SecretStr

from streamvln_model.data.store import index_exists
from streamvln_model.secrets import split_secrets
from streamvln_model.tokenizer import cache_root
from tasks.arguments import resolve_arguments
from tasks.data import build_data_module, data_settings
from tasks.environment import setup_environment
from tasks.gradients import plan_gradients
from tasks.memory import plan_run_memory, show_memory_plan
from tasks.model import plan_model
from tasks.parameters import LaunchConfig, RegistryConfig, TrainRequest
from tasks.saving import save_model
from tasks.tokenizer import setup_tokenizer
from tasks.tracking import close_run, log_plan, open_run, tracking_uri
from tasks.trainer_init import init_trainer
from tasks.training import train
from tasks.vision import setup_vision


class TrainFlowResult(BaseModel):
    flow_run_id: str
    output_dir: str
    plan_path: str
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    model_uri: str | None = None
    model_version: str | None = None
    steps: int | None = None
    world_size: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None


def secret_environment(request: TrainRequest) -> dict[str, SecretStr]:
    """Secrets typed into the request, as the environment variables the workers read them from."""
    return {name: SecretStr(value) for name, value in split_secrets(request.flags())[1].items()}


def default_plan_root() -> str:
    return str(cache_root() / "plans")


@flow(name="streamvln-train")
def streamvln_train(
    request: TrainRequest,
    launch: LaunchConfig | None = None,
    registry: RegistryConfig | None = None,
    plan_root: str | None = None,
    plan_only: bool = False,
    train_retries: int = 0,
    index_root: str | None = None,
) -> TrainFlowResult:
    """Train StreamVLN: plan (cached), launch torchrun, register the model in MLflow.

    `plan_only` stops after Trainer Initialization: arguments, checkpoint and data are validated
    and indexed, nothing is trained. `train_retries` relaunches a failed training, which resumes
    from the newest checkpoint in output_dir. `index_root` (e.g. `s3://bucket/indexes`) is where
    data indexes go instead of `<plan_root>/data-index`, shared by nodes that mount data elsewhere.
    """
    launch = launch or LaunchConfig()
    registry = registry or RegistryConfig()
    plan_root = plan_root or default_plan_root()

    arguments = resolve_arguments(request)
    environment = setup_environment(arguments, launch)
    model = plan_model(arguments)
    tokenizer = setup_tokenizer(arguments)
    vision = setup_vision(model)  # sizes come from the tower in the checkpoint
    gradients = plan_gradients(arguments, model)
    memory = plan_run_memory(arguments, environment, model)  # --gpu_memory_gb: fits, or the cheapest fix
    show_memory_plan(memory)
    settings = data_settings(arguments, vision)
    data = build_data_module(settings, plan_root, index_root)  # every sample checked before any GPU
    if not index_exists(data.index_path):  # a cached plan whose index was deleted since
        data = build_data_module.with_options(refresh_cache=True)(settings, plan_root, index_root)
    trainer_plan = init_trainer(
        arguments, environment, model, tokenizer, vision, gradients, data, launch, memory=memory
    )
    result = TrainFlowResult(
        flow_run_id=str(flow_run.get_id()),
        output_dir=trainer_plan.output_dir,
        plan_path=trainer_plan.plan_path,
    )
    if plan_only:
        return result

    run_id = open_run(registry.experiment_name, arguments)
    result.mlflow_run_id, result.tracking_uri = run_id, tracking_uri()
    succeeded = False
    try:
        log_plan(run_id, arguments, data, gradients, trainer_plan.plan_path, memory=memory)
        trained = train.with_options(retries=train_retries)(
            trainer_plan, run_id, result.tracking_uri, launch.timeout_s, secret_environment(request)
        )
        saved = save_model(trained, run_id, registry)
        succeeded = True
    finally:
        close_run(run_id, succeeded)
    result.model_uri, result.model_version = saved.model_uri, saved.version
    result.steps, result.world_size = trained.steps, trained.world_size
    result.first_loss, result.last_loss = trained.first_loss, trained.last_loss
    return result
