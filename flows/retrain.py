"""The `streamvln-retrain` flow: retrain when the data changed, promote only a better model.

Meant for a schedule (deployments/prefect.yaml): new DAgger rounds land in the trajectory
folders, and each scheduled run

1. fingerprints the data the way training indexes it (the data stage's content hash; the stage is
   cached, so unchanged data costs a directory walk) and compares it with the fingerprint recorded
   on the version holding `champion_alias`; equal: it ends Completed, saying so in the log and in a
   `retraining-decision` artifact, and trains nothing;
2. otherwise fine-tunes from the champion (its registry URI is the starting checkpoint, downloaded
   once and cached), or from `base_model` while there is no champion yet, in a new run folder;
3. registers the result as a candidate, scores candidate and champion on the same held-out
   episodes of unseen scenes in one evaluation run, and moves `champion_alias` only when the
   candidate is strictly better; both scores and the decision are tags of the candidate version.
   The run's earlier checkpoints (one per epoch with `save_strategy: epoch`) are scored in the
   same evaluation run, so the candidate's MLflow run holds the held-out metrics per checkpoint
   and at the end (`heldout.*`, by step).
"""

import time
from pathlib import Path
from typing import Annotated

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from flows.presets import with_preset
from flows.train import default_plan_root, plan_run, streamvln_train
from streamvln_model.registry.models import is_registry_uri, version_uri
from streamvln_model.registry.promotion import champion, evaluation_targets
from tasks.evaluation import DATA_FLAGS, evaluate_models
from tasks.model import fetch_model
from tasks.parameters import (
    DataOptions,
    LaunchConfig,
    ModelOptions,
    PresetName,
    TrackingConfig,
    TrainingOptions,
)
from tasks.promotion import promote_candidate
from tasks.reporting import LINEAGE_TAG_PREFIX
from tasks.secrets import load_secret_blocks
from tasks.trainer_init import checkpoint_step

FINGERPRINT_TAG = f"{LINEAGE_TAG_PREFIX}fingerprint"
DECISION_KEY = "retraining-decision"


class RetrainResult(BaseModel):
    trained: bool
    reason: str
    data_fingerprint: str
    champion_version: str | None = None
    candidate_version: str | None = None
    promoted: bool = False
    run_folder: str | None = None
    scores: dict | None = None


@flow(name="streamvln-retrain")
def streamvln_retrain(
    model_name: Annotated[str, Field(title="Registered model")],
    video_folder: Annotated[
        str, Field(title="Trajectory folders", description="Comma-separated, DAgger rounds included")
    ],
    eval_video_folder: Annotated[
        str,
        Field(title="Held-out folders", description="Episodes of scenes never trained on (comma-separated)"),
    ],
    output_dir: Annotated[
        str, Field(title="Output root", description="Each retraining gets a new folder here")
    ],
    base_model: Annotated[
        str | None, Field(title="First checkpoint", description="Start here while the model has no champion")
    ] = None,
    preset: PresetName | None = "stage_two",
    champion_alias: str = "champion",
    experiment_name: str = "streamvln-retrain",
    data: DataOptions | None = None,
    training: TrainingOptions | None = None,
    launch: LaunchConfig | None = None,
    train_retries: Annotated[int, Field(ge=0, le=20)] = 2,
    plan_root: str | None = None,
    index_root: str | None = None,
) -> RetrainResult:
    """Retrain `model_name` from its champion when the data changed; promote only a better model.

    Args:
        model_name: The registered model: its champion is the starting point and the judge.
        video_folder: Trajectory folders the model trains on, comma-separated; new DAgger
            rounds land here (a changed folder changes the fingerprint).
        eval_video_folder: Held-out episodes of scenes the training folders never show.
        output_dir: Output root: every retraining trains into a new folder under it.
        base_model: The checkpoint of the very first training, while there is no champion.
        preset: The recipe (configs/); `data` and `training` fields set here win.
        champion_alias: The alias that serves (moved only to a strictly better version).
        experiment_name: MLflow experiment of the retraining runs.
        data: Data settings beyond the preset's (video_folder above wins).
        training: Training settings beyond the preset's (output_dir above wins).
        launch: How torchrun starts the workers.
        train_retries: Relaunches of a training killed by a fault.
        plan_root: Where cached plans and data indexes go.
        index_root: Where data indexes go instead (e.g. s3://bucket/indexes).
    """
    logger = get_run_logger()
    load_secret_blocks()
    client = mlflow.MlflowClient()
    current = champion(client, model_name, champion_alias)
    start = version_uri(model_name, current.version) if current is not None else base_model
    if start is None:
        raise ValueError(
            f"{model_name!r} has no {champion_alias!r} version yet. Fix: set base_model to the checkpoint "
            "the first training starts from"
        )
    groups = {
        "model": ModelOptions(model_name_or_path=start),
        "data": (data or DataOptions()).model_copy(update={"video_folder": video_folder}),
        "training": (training or TrainingOptions()).model_copy(update={"output_dir": output_dir}),
    }
    tracking = TrackingConfig(experiment_name=experiment_name, model_name=model_name, alias="candidate")
    request, launch, tracking = with_preset(preset, groups, launch, tracking)
    local_request = fetch_model(request)[0] if is_registry_uri(start) else request
    plans = plan_run(local_request, launch, plan_root or default_plan_root(), index_root)
    fingerprint = plans.data.fingerprint
    recorded = current.tags.get(FINGERPRINT_TAG) if current is not None else None
    if recorded == fingerprint:
        reason = (
            f"data unchanged since {model_name} version {current.version} ({champion_alias}) was trained "
            f"(fingerprint {fingerprint[:12]}): nothing to train"
        )
        _decision_artifact(reason)
        logger.info(reason)
        return RetrainResult(
            trained=False, reason=reason, data_fingerprint=fingerprint, champion_version=current.version
        )

    trained = streamvln_train(
        **request.groups(), launch=launch, tracking=tracking, train_retries=train_retries,
        plan_root=plan_root, index_root=index_root,
    )  # fmt: skip
    result = RetrainResult(
        trained=True,
        reason="first training" if current is None else f"data changed since version {current.version}",
        data_fingerprint=fingerprint,
        champion_version=current.version if current is not None else None,
        candidate_version=trained.model_version,
        run_folder=trained.output_dir,
    )
    if not trained.registered:
        result.reason += f"; {trained.skipped_reason}"
        _decision_artifact(result.reason)
        return result
    arguments = plans.arguments
    settings = {**arguments.data, **arguments.training}
    checkpoints = intermediate_checkpoints(trained.output_dir, trained.steps or 0)
    scores = evaluate_models(
        [*evaluation_targets(client, model_name, trained.model_version, champion_alias), *checkpoints],
        eval_video_folder,
        video_folder,
        {name: settings.get(name) for name in DATA_FLAGS},
    )
    _log_scores(client, trained.mlflow_run_id, scores, model_name, trained.model_version, trained.steps or 0)
    decision = promote_candidate(model_name, trained.model_version, scores, champion_alias)
    result.promoted, result.scores = decision["promoted"], scores
    result.reason += f"; {'promoted' if decision['promoted'] else 'not promoted'}: {decision['reason']}"
    _decision_artifact(result.reason)
    logger.info(result.reason)
    return result


def _log_scores(
    client: mlflow.MlflowClient, run_id: str, scores: dict, name: str, version: str, step: int
) -> None:
    """Held-out scores on the candidate's training run: its own as `heldout.*`, the champion's it
    was compared with as `heldout.champion.*` (same episodes, same evaluation run)."""
    now, entries = int(time.time() * 1000), []
    for model, values in scores["models"].items():
        if model == version_uri(name, version):
            prefix, at = "heldout.", step
        elif Path(model).name.startswith("checkpoint-"):  # earlier in this run: the curve per checkpoint
            prefix, at = "heldout.", checkpoint_step(model)
        else:
            prefix, at = "heldout.champion.", step
        entries += [
            mlflow.entities.Metric(f"{prefix}{k}", float(v), now, at)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
    client.log_batch(run_id, metrics=entries)


def intermediate_checkpoints(run_folder: str, final_step: int) -> list[str]:
    """The run's complete checkpoints before its last step (per epoch with save_strategy epoch),
    oldest first: scored beside the candidate, so the held-out curve shows how training went."""
    found = [path for path in Path(run_folder).glob("checkpoint-*") if path.is_dir()]
    steps = {str(path): checkpoint_step(str(path)) for path in found}
    return sorted((p for p, s in steps.items() if s < final_step), key=steps.__getitem__)


def _decision_artifact(reason: str) -> None:
    create_markdown_artifact(
        f"## Retraining\n\n{reason}\n", key=DECISION_KEY, description="Retraining decision"
    )
