"""Guarded promotion: the serving alias moves only to a version that scores better on held-out scenes.

Three registered versions of one model, scored on episodes of a scene none of them trained on:

1. the untrained checkpoint: no champion yet, so it becomes the champion;
2. a model trained on the true actions: it reads the actions off its frames, so it beats the
   champion and is promoted (through `streamvln promote`);
3. a model trained on the same episodes with each episode's actions shuffled: the frames no longer
   tell the answer, so it cannot beat the champion; it is registered but not promoted.

Both decisions, their reasons and both scores are tags of the candidate versions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from streamvln_model.registry.models import version_uri
from streamvln_model.registry.promotion import champion, promote
from streamvln_model.registry.pyfunc import log_checkpoint_model

pytestmark = pytest.mark.slow  # two tiny trainings (shared with tests/test_pull.py)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "streamvln-promotion"

# The cheapest recipe measured to separate the two models reliably: many short episodes (8 turns,
# one chunk: too many to learn by heart, so only the frames tell the answers), a few long ones
# (samples with history, as the pull test asks with history), a high learning rate. The model
# starts reading its frames after ~130 steps (at 120 it had not yet, with this seed). Measured
# after 200 steps on the held-out scene: true actions 0.985 action accuracy / 0.960 exact turns,
# shuffled actions 0.284 / 0.000, the untrained checkpoint 0 / 0 (124 turns, 482 actions).
SHORT_EPISODES, LONG_EPISODES = 48, 4
TRAIN_STEPS, LEARNING_RATE = 200, "1e-2"
RECIPE = [
    "--version", "qwen_1_5", "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
    "--mm_use_im_patch_token", "false", "--num_history", "8", "--num_future_steps", "4",
]  # fmt: skip


@dataclass(frozen=True)
class TrainedModels:
    train: str  # --video_folder: episodes of scene "kitchen", true actions (two folders)
    shuffled_train: str  # the same episodes, each one's actions shuffled
    heldout: Path  # episodes of scene "attic"
    good: Path
    shuffled: Path


def _shuffled_copy(source: Path, target: Path) -> Path:
    """The same frames and instructions; each episode's actions in a random order."""
    shutil.copytree(source, target)
    episodes = json.loads((target / "annotations.json").read_text())
    rng = random.Random(0)
    for episode in episodes:
        real = episode["actions"][1:]
        rng.shuffle(real)
        episode["actions"] = [episode["actions"][0], *real]
    (target / "annotations.json").write_text(json.dumps(episodes))
    return target


def _train(checkpoint: Path, data: str, out: Path) -> Path:
    from streamvln_model.training.worker import train

    train([
        "--model_name_or_path", str(checkpoint), "--video_folder", data, "--output_dir", str(out),
        "--use_cpu", "true", "--max_steps", str(TRAIN_STEPS), "--per_device_train_batch_size", "2",
        "--learning_rate", LEARNING_RATE, "--warmup_ratio", "0.05", "--lr_scheduler_type", "cosine",
        "--weight_decay", "0", "--logging_steps", "20", "--save_strategy", "no", "--report_to", "none",
        "--gradient_checkpointing", "false", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
        "--seed", "0", *RECIPE,
    ])  # fmt: skip
    return out


def trained_models(checkpoint: Path) -> TrainedModels:
    """Data and the two trained models, built once per test session beside `checkpoint` (the
    session's tiny checkpoint), so tests/test_pull.py reuses them: the folders are the cache."""
    from streamvln_model.synthetic import write_trajectories

    root = checkpoint.parent / "promotion-models"
    short, long = root / "train" / "short", root / "train" / "long"
    models = TrainedModels(
        f"{short},{long}",
        f"{short}-shuffled,{long}-shuffled",
        root / "heldout",
        root / "good",
        root / "shuffled",
    )
    if not (models.heldout / "annotations.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_trajectories(short, SHORT_EPISODES, min_steps=28, max_steps=31, seed=1, scene="kitchen")
        write_trajectories(long, LONG_EPISODES, min_steps=60, max_steps=64, seed=2, scene="kitchen")
        for folder in (short, long):
            _shuffled_copy(folder, Path(f"{folder}-shuffled"))
        # Episodes of 28-40 steps: those over 32 steps also give samples with history.
        write_trajectories(models.heldout, 6, min_steps=28, max_steps=40, seed=99, scene="attic")
    for data, out in ((models.train, models.good), (models.shuffled_train, models.shuffled)):
        if not (out / "model.safetensors").is_file():
            shutil.rmtree(out, ignore_errors=True)
            _train(checkpoint, data, out)
    return models


def register_version(client: mlflow.MlflowClient, name: str, folder: Path, train: str) -> str:
    """Log `folder` as a pyfunc into a run that records its training folder (as the flow's
    runs do: `data.video_folder`), register it under `name`; returns the version."""
    experiment = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    run = client.create_run(experiment.experiment_id)
    client.log_param(run.info.run_id, "data.video_folder", train)
    info = log_checkpoint_model(folder, run.info.run_id)
    client.set_terminated(run.info.run_id)
    return str(mlflow.register_model(info.model_uri, name).version)


def _promote_cli(uri: str, version: str, heldout: Path, tmp_path: Path) -> tuple[int, dict | None, str]:
    command = [
        sys.executable, "-m", "flows.cli", "promote", "--model-name", MODEL_NAME, "--version", version,
        "--eval-video-folder", str(heldout), "--json",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "STREAMVLN_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    return done.returncode, result, done.stderr


@pytest.fixture(scope="module")
def registry(mlflow_server, tiny_checkpoint):
    mlflow.set_tracking_uri(mlflow_server.uri)
    client = mlflow.MlflowClient(mlflow_server.uri)
    models = trained_models(tiny_checkpoint)
    return client, models


def test_only_a_better_version_takes_the_alias(registry, mlflow_server, tiny_checkpoint, tmp_path):
    from streamvln_model.registry.heldout import evaluate_models

    client, models = registry
    untrained = register_version(client, MODEL_NAME, tiny_checkpoint, models.train)
    good = register_version(client, MODEL_NAME, models.good, models.train)
    shuffled = register_version(client, MODEL_NAME, models.shuffled, models.shuffled_train)

    # 1. No champion yet: the first version evaluated takes the alias (library call, as the flow does).
    scores = evaluate_models([version_uri(MODEL_NAME, untrained)], str(models.heldout), models.train)
    first = promote(client, MODEL_NAME, untrained, scores)
    assert first["promoted"] and first["reason"].startswith("no champion yet"), first
    assert champion(client, MODEL_NAME).version == untrained

    # 2. The model trained on the true actions, through the CLI: scored with the champion, promoted.
    code, second, stderr = _promote_cli(mlflow_server.uri, good, models.heldout, tmp_path)
    assert code == 0, stderr[-3000:]
    assert second["promoted"] and second["champion_version"] == untrained, second
    assert second["heldout"]["scenes"] == ["attic"]
    assert second["heldout"]["train_folders"] == models.train.split(",")  # as the runs recorded
    assert champion(client, MODEL_NAME).version == good

    # 3. The model trained on shuffled actions is registered, scored against the champion, refused.
    scores = evaluate_models(
        [version_uri(MODEL_NAME, shuffled), version_uri(MODEL_NAME, good)],
        str(models.heldout),
        f"{models.train},{models.shuffled_train}",
    )
    third = promote(client, MODEL_NAME, shuffled, scores)
    assert not third["promoted"], third
    assert champion(client, MODEL_NAME).version == good

    good_scores, shuffled_scores = third["champion"], third["candidate"]
    summary = {
        name: f"exact turn {s['exact_turn_match']:.3f}, action {s['action_accuracy']:.3f}"
        for name, s in (
            ("true actions", good_scores),
            ("shuffled", shuffled_scores),
            ("untrained", second["champion"]),
        )
    }
    print(f"\nheld-out ({good_scores['turns']} turns, {good_scores['actions']} actions): {summary}")
    assert good_scores["exact_turn_match"] > shuffled_scores["exact_turn_match"]
    assert good_scores["action_accuracy"] > 0.5 > shuffled_scores["action_accuracy"]  # it reads its frames

    # Both decisions are visible on the versions.
    promoted = client.get_model_version(MODEL_NAME, good).tags
    refused = client.get_model_version(MODEL_NAME, shuffled).tags
    assert promoted["promotion.decision"] == "promoted" and promoted["promotion.compared_with"] == untrained
    assert refused["promotion.decision"] == "rejected" and refused["promotion.compared_with"] == good
    assert refused["promotion.reason"] == third["reason"]
    assert float(refused["promotion.candidate.exact_turn_match"]) == shuffled_scores["exact_turn_match"]
    assert float(refused["promotion.champion.exact_turn_match"]) == good_scores["exact_turn_match"]
    assert json.loads(refused["promotion.champion_scores"]) == good_scores


def test_promote_refuses_heldout_scenes_seen_in_training(registry, mlflow_server, tmp_path):
    client, models = registry
    version = register_version(client, MODEL_NAME + "-overlap", models.good, models.train)
    command = [
        sys.executable, "-m", "flows.cli", "promote", "--model-name", MODEL_NAME + "-overlap",
        "--version", version, "--eval-video-folder", models.train,
    ]  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "STREAMVLN_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "share scene(s) kitchen" in done.stderr and models.train.split(",")[0] in done.stderr
    assert not (tmp_path / "cache" / "models").exists()  # refused before any download
    assert champion(client, MODEL_NAME + "-overlap") is None
