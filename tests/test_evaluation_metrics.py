"""Held-out scores: hand-checked turn metrics, a real tiny model, and the scene split.

The forced-logits cases build a real conversation with the real tokenizer and pick by hand which
action predictions are wrong, so every score is known before it is computed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamvln_model.data.formats.prompts import navigation_conversation
from streamvln_model.model.constants import (
    ACTION_FORWARD,
    ACTION_LEFT,
    ACTION_RIGHT,
    ACTION_STOP,
    IGNORE_INDEX,
)
from streamvln_model.model.conversation import prepare_tokenizer, tokenize_conversation
from streamvln_model.model.tokenizer import load_tokenizer
from streamvln_model.registry.heldout import SceneOverlapError, check_heldout, scene_of
from streamvln_model.registry.scores import (
    ScoreTally,
    action_accuracy,
    action_token_ids,
    navigation_scores,
    tally_logits,
    turn_spans,
)
from streamvln_model.synthetic import write_trajectories

UP, LEFT, RIGHT, STOP = ACTION_FORWARD, ACTION_LEFT, ACTION_RIGHT, ACTION_STOP


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = load_tokenizer()
    return tokenizer, prepare_tokenizer(tokenizer)


def _labels(tokenizer, groups: list[list[int]]) -> torch.Tensor:
    tok, spec = tokenizer
    conversation = navigation_conversation("Walk to the sofa.", groups, False, random.Random(0))
    _, labels = tokenize_conversation(tok, spec, conversation)
    return torch.tensor(labels)


def _score(tokenizer, groups, wrong_actions: dict[int, int], wrong_other: int = 0):
    """Scores of one sequence whose k-th action token is predicted as action `wrong_actions[k]`;
    `wrong_other` supervised non-action targets (ChatML tokens) are mispredicted too."""
    tok, _ = tokenizer
    ids = action_token_ids(tok)
    action_of = {token: action for action, token in ids.items()}
    labels = _labels(tokenizer, groups)
    targets = labels[1:].clone()
    predicted = targets.clamp(min=0).clone()
    action_positions = [i for i, t in enumerate(targets.tolist()) if t in action_of]
    for k, action in wrong_actions.items():
        predicted[action_positions[k]] = ids[action]
    others = [i for i, t in enumerate(targets.tolist()) if t != IGNORE_INDEX and t not in action_of]
    for i in others[:wrong_other]:
        predicted[i] = ids[UP]
    logits = torch.full((1, labels.shape[0], len(tok) + 8), -1.0)
    logits[0, torch.arange(predicted.shape[0]), predicted] = 1.0  # position t-1 predicts target t
    tally = ScoreTally(samples=1)
    tally_logits(tally, logits, labels[None], action_of)
    return tally.scores()


def test_every_action_symbol_is_one_token_in_a_turn(tokenizer):
    scores = _score(tokenizer, [[UP, UP, LEFT, RIGHT], [STOP]], {})
    assert (scores.actions, scores.turns) == (5, 2)
    assert scores.action_accuracy == scores.per_turn_accuracy == scores.exact_turn_match == 1.0


def test_hand_checked_scores_with_one_wrong_action(tokenizer):
    # Turn 1 ↑↑←→ with ← answered as →; turn 2 STOP right.
    scores = _score(tokenizer, [[UP, UP, LEFT, RIGHT], [STOP]], {2: RIGHT})
    assert scores.action_accuracy == 4 / 5
    assert scores.per_turn_accuracy == (3 / 4 + 1 / 1) / 2
    assert scores.exact_turn_match == 1 / 2
    assert scores.majority_baseline == 2 / 5  # ↑ is the most common target
    assert scores.per_action == {
        "STOP": {"accuracy": 1.0, "count": 1},
        "MOVE_FORWARD": {"accuracy": 1.0, "count": 2},
        "TURN_LEFT": {"accuracy": 0.0, "count": 1},
        "TURN_RIGHT": {"accuracy": 1.0, "count": 1},
    }


def test_turns_are_separate_runs_and_chatml_tokens_do_not_count(tokenizer):
    groups = [[UP, LEFT, LEFT, UP], [RIGHT, RIGHT, RIGHT, RIGHT], [UP, STOP]]
    # One wrong action in each of the first two turns, and ChatML targets mispredicted too.
    scores = _score(tokenizer, groups, {0: LEFT, 7: UP}, wrong_other=6)
    assert (scores.turns, scores.actions) == (3, 10)
    assert scores.action_accuracy == 8 / 10
    assert scores.per_turn_accuracy == pytest.approx((3 / 4 + 3 / 4 + 1) / 3)
    assert scores.exact_turn_match == 1 / 3


def test_padding_makes_no_turn(tokenizer):
    tok, _ = tokenizer
    action_of = {token: action for action, token in action_token_ids(tok).items()}
    labels = _labels(tokenizer, [[UP, STOP]])
    padded = torch.cat([labels, torch.full((7,), IGNORE_INDEX)])
    assert turn_spans(padded[1:], action_of) == turn_spans(labels[1:], action_of)
    assert len(turn_spans(labels[1:], action_of)) == 1


@pytest.mark.slow  # the tiny model scores every turn of the data (~6 s)
def test_real_tiny_model_scores_count_every_turn(tiny_checkpoint, synthetic_data):
    from streamvln_model import StreamVLNForCausalLM
    from streamvln_model.data.datasets.collator import DataCollatorForNavigation
    from streamvln_model.data.datasets.navigation import VLNActionDataset
    from streamvln_model.data.formats.annotations import load_episodes
    from streamvln_model.data.index.tables import build_index
    from streamvln_model.model.vision import build_image_processor

    model = StreamVLNForCausalLM.from_pretrained(tiny_checkpoint).eval()
    tok = load_tokenizer(tiny_checkpoint)
    spec = prepare_tokenizer(tok)
    index, _ = build_index(load_episodes(str(synthetic_data)), 32, 8, 4)
    dataset = VLNActionDataset(index, tok, spec, build_image_processor(model.get_vision_tower().config))
    subset = torch.utils.data.Subset(dataset, range(2))
    collator = DataCollatorForNavigation(tok.pad_token_id, 4096)
    plans = [dataset.plan(i) for i in range(2)]
    groups = [turn["value"] for plan in plans for turn in plan.conversation if turn["from"] == "gpt"]

    scores = navigation_scores(model, subset, collator, tok, batch_size=2)
    assert scores.samples == 2
    assert scores.turns == len(groups)
    assert scores.actions == sum(len(group.replace("STOP", "S")) for group in groups)
    assert sum(v["count"] for v in scores.per_action.values()) == scores.actions
    one_by_one = navigation_scores(model, subset, collator, tok, batch_size=1)
    assert one_by_one == scores  # right padding changes nothing
    assert action_accuracy(model, subset, collator, tok).accuracy == scores.action_accuracy


# --- Held-out by scene ----------------------------------------------------------------------------
def test_scene_is_the_folder_name_up_to_the_first_underscore():
    assert scene_of("images/17DRP5sb8fy_r2r_000012") == "17DRP5sb8fy"
    assert scene_of("images/synth_000003") == "synth"
    assert scene_of("images/kitchen_synth_000003/") == "kitchen"


def test_synthetic_scenes_name_the_folders(tmp_path):
    summary = write_trajectories(tmp_path / "a", episodes=2, min_steps=4, max_steps=5, scene="kitchen")
    episodes = json.loads(summary.annotations_path.read_text())
    assert [e["video"] for e in episodes] == ["images/kitchen_synth_000000", "images/kitchen_synth_000001"]
    assert all((tmp_path / "a" / e["video"] / "rgb" / "000.jpg").is_file() for e in episodes)
    plain = write_trajectories(tmp_path / "b", episodes=1, min_steps=4, max_steps=5)
    assert json.loads(plain.annotations_path.read_text())[0]["video"] == "images/synth_000000"
    with pytest.raises(ValueError, match="scene 'a_b'"):
        write_trajectories(tmp_path / "c", episodes=1, scene="a_b")


def _scenes(root: Path, **folders: list[str]) -> dict[str, str]:
    for name, scenes in folders.items():
        for k, scene in enumerate(scenes):
            write_trajectories(root / name / scene, episodes=1, min_steps=4, max_steps=5, seed=k, scene=scene)
    return {name: ",".join(str(root / name / s) for s in scenes) for name, scenes in folders.items()}


def test_overlapping_scenes_are_refused_by_name(tmp_path):
    folders = _scenes(tmp_path, train=["kitchen", "attic"], held=["attic", "garden"], other=["cellar"])
    assert check_heldout(folders["other"], folders["train"]) == ["cellar"]
    with pytest.raises(SceneOverlapError) as caught:
        check_heldout(folders["held"], folders["train"])
    message = str(caught.value)
    assert "share scene(s) attic" in message
    assert str(tmp_path / "held" / "attic") in message and str(tmp_path / "train" / "attic") in message
    assert "garden" not in message and "kitchen" not in message


@pytest.mark.processes  # the evaluation worker in a subprocess
def test_evaluate_worker_exits_2_on_overlap_before_loading_anything(tmp_path):
    folders = _scenes(tmp_path, train=["kitchen"], held=["kitchen"])
    command = [
        sys.executable, "-m", "streamvln_model.evaluate", "--model", str(tmp_path / "no-such-model"),
        "--video_folder", folders["held"], "--train_video_folder", folders["train"],
        "--output", str(tmp_path / "scores.json"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "streamvln evaluate: error: the held-out episodes are not held out" in done.stderr
    assert "share scene(s) kitchen" in done.stderr
    assert not (tmp_path / "scores.json").exists()
