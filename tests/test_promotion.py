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
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from streamvln_model.registry.models import version_uri
from streamvln_model.registry.promotion import champion, promote
from tests.helpers import mlflow_tracking_at, register_version

pytestmark = pytest.mark.slow  # two tiny trainings (`trained_models`, shared with tests/test_pull.py)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "streamvln-promotion"


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
def registry(mlflow_server, trained_models):
    with mlflow_tracking_at(mlflow_server.uri):
        yield mlflow.MlflowClient(mlflow_server.uri), trained_models


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
