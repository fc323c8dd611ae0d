"""Scheduled retraining, run three times as a schedule would: the first run trains and promotes,
the second (data unchanged) trains nothing and says why, the third (one new DAgger episode) trains
from the champion into a new folder and registers a new version. No run resumes another's folder.

Real flow runs on the test Prefect server, real MLflow server and registry, real torchrun and the
real held-out evaluation worker; tiny model, a few steps each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flows.retrain import DECISION_KEY, FINGERPRINT_TAG, streamvln_retrain
from streamvln_model.synthetic import write_trajectories
from tasks.parameters import LaunchConfig, TrainingOptions
from tests.helpers import read_annotations, write_annotations

MODEL = "retrain-test"


def add_dagger_episode(folder: Path, source: Path) -> None:
    """Append `source`'s first episode to `folder` as a new DAgger episode (new id, new frame folder)."""
    episodes, new = read_annotations(folder), read_annotations(source)[0]
    video = new["video"].replace("synth", "dagger")
    shutil.copytree(source / new["video"], folder / video)
    episodes.append({**new, "id": max(e["id"] for e in episodes) + 1, "video": video})
    write_annotations(folder, episodes)


@pytest.fixture
def retrain_env(prefect_harness, mlflow_tracking):
    return mlflow.MlflowClient(mlflow_tracking.uri)


def _artifact(flow_run_id, key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    return found[0] if found else None


def test_retraining_trains_only_on_new_data_from_the_champion(retrain_env, tiny_checkpoint, tmp_path):
    client = retrain_env
    train, heldout, dagger = tmp_path / "train", tmp_path / "heldout", tmp_path / "dagger"
    write_trajectories(train, episodes=4, min_steps=20, max_steps=30, seed=1, scene="sceneA")
    write_trajectories(heldout, episodes=2, min_steps=20, max_steps=30, seed=9, scene="sceneB")
    write_trajectories(dagger, episodes=1, min_steps=20, max_steps=30, seed=5, scene="sceneA")
    parameters = dict(
        model_name=MODEL, video_folder=str(train), eval_video_folder=str(heldout),
        output_dir=str(tmp_path / "runs"), base_model=str(tiny_checkpoint), preset="tiny",
        experiment_name="retrain-test", training=TrainingOptions(max_steps=4, save_strategy="no"),
        launch=LaunchConfig(device="cpu", nproc_per_node=1), plan_root=str(tmp_path / "plans"),
    )  # fmt: skip

    first = streamvln_retrain(**parameters)
    assert first.trained and first.promoted and first.candidate_version == "1", first
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" and champion.tags[FINGERPRINT_TAG] == first.data_fingerprint
    assert champion.tags["promotion.decision"] == "promoted"

    state = streamvln_retrain(**parameters, return_state=True)
    second = state.result()
    assert not second.trained and "data unchanged" in second.reason and second.candidate_version is None
    decision = _artifact(state.state_details.flow_run_id, DECISION_KEY)
    assert decision is not None and "data unchanged" in decision.data
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1

    add_dagger_episode(train, dagger)
    # This time with a checkpoint mid-run: the held-out metrics are logged for it and at the end.
    third = streamvln_retrain(
        **{**parameters, "training": TrainingOptions(max_steps=4, save_strategy="steps", save_steps=2)}
    )
    assert (
        third.trained and third.candidate_version == "2" and third.data_fingerprint != first.data_fingerprint
    )
    assert Path(third.run_folder).parent == Path(first.run_folder).parent != Path(third.run_folder)
    version = client.get_model_version(MODEL, "2")
    run = client.get_run(version.run_id)
    assert run.data.tags["model.source"] == f"models:/{MODEL}/1"  # fine-tuned from the champion
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
    # trained from step 0 in its own folder, not resumed from run 1's
    assert sorted(p.name for p in Path(third.run_folder).glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    assert json.loads((Path(third.run_folder) / "trainer_state.json").read_text())["global_step"] == 4
    heldout = client.get_metric_history(run.info.run_id, "heldout.exact_turn_match")
    assert sorted(m.step for m in heldout) == [2, 4]  # at the checkpoint and at the end
    assert version.tags["promotion.decision"] in ("promoted", "rejected")
    assert {"heldout.exact_turn_match", "heldout.champion.exact_turn_match"} <= set(run.data.metrics)
    expected = "2" if third.promoted else "1"
    assert client.get_model_version_by_alias(MODEL, "champion").version == expected
