"""Pixels reach the language model: a tiny model learns to read the actions off the frames.

Synthetic frames show the next actions as coloured bands, and actions are drawn uniformly, so a
model that ignores images can at best guess the most frequent action (~1/3). A trained model
answers held-out episodes' turns (teacher-forced argmax over the action tokens) far better.
"""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from streamvln_model import StreamVLNForCausalLM
from streamvln_model.arguments import ModelArguments
from streamvln_model.builder import load_prepared_tokenizer
from streamvln_model.data.annotations import load_episodes
from streamvln_model.data.collator import DataCollatorForNavigation
from streamvln_model.data.index import build_index
from streamvln_model.data.vln_dataset import VLNActionDataset
from streamvln_model.evaluation import action_accuracy
from streamvln_model.inference import NavigationPolicy, parse_actions
from streamvln_model.synthetic import write_trajectories
from streamvln_model.synthetic.checkpoint import write_checkpoint
from streamvln_model.train import train

# The published scripts' model and data flags (their defaults differ in the published parser).
STREAMVLN_RECIPE = [
    "--version", "qwen_1_5", "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
    "--mm_use_im_patch_token", "false", "--num_history", "8", "--num_future_steps", "4",
]  # fmt: skip


@pytest.mark.slow
def test_trained_model_reads_actions_from_pixels(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "init", seed=0)
    write_trajectories(tmp_path / "train", episodes=48, min_steps=20, max_steps=70, seed=1)
    held_out = tmp_path / "held_out"
    write_trajectories(held_out, episodes=6, min_steps=20, max_steps=70, seed=99)
    out = tmp_path / "trained"
    train([
        "--model_name_or_path", str(checkpoint), "--video_folder", str(tmp_path / "train"),
        "--output_dir", str(out), "--use_cpu", "true", "--num_train_epochs", "4",
        "--per_device_train_batch_size", "2", "--learning_rate", "3e-3", "--warmup_ratio", "0.05",
        "--lr_scheduler_type", "cosine", "--weight_decay", "0", "--logging_steps", "20",
        "--save_strategy", "no", "--report_to", "none", "--gradient_checkpointing", "false",
        "--disable_tqdm", "true", *STREAMVLN_RECIPE,
    ])  # fmt: skip

    model = StreamVLNForCausalLM.from_pretrained(out)
    tokenizer, spec = load_prepared_tokenizer(ModelArguments(model_name_or_path=str(out), version="qwen_1_5"))
    index, _ = build_index(load_episodes(str(held_out)), 32, 8, 4)
    policy = NavigationPolicy.from_pretrained(out)
    dataset = VLNActionDataset(index, tokenizer, spec, policy.image_processor)
    score = action_accuracy(
        model, dataset, DataCollatorForNavigation(tokenizer.pad_token_id, 4096), tokenizer
    )

    assert score.actions > 500
    assert score.majority_baseline <= 0.4, score
    assert score.accuracy >= 0.6, score

    # Control: the same episodes with every frame replaced by one grey image. The text is
    # unchanged, so whatever the model still gets right it gets from text alone.
    blind = tmp_path / "blind"
    shutil.copytree(held_out, blind)
    for frame in blind.glob("images/*/rgb/*.jpg"):
        Image.new("RGB", (160, 120), (128, 128, 128)).save(frame)
    blind_index, _ = build_index(load_episodes(str(blind)), 32, 8, 4)
    blind_dataset = VLNActionDataset(blind_index, tokenizer, spec, policy.image_processor)
    collator = DataCollatorForNavigation(tokenizer.pad_token_id, 4096)
    blind_score = action_accuracy(model, blind_dataset, collator, tokenizer)
    assert blind_score.actions == score.actions
    assert blind_score.accuracy <= 0.45, blind_score
    print(f"\naction accuracy {score.accuracy:.3f} (majority {score.majority_baseline:.3f}, "
          f"grey frames {blind_score.accuracy:.3f}) over {score.actions} actions")  # fmt: skip

    # The registered-model path (greedy generation from one observation) reads the same bands.
    plan = dataset.plan(0)
    answer = policy.next_actions(plan.instruction, plan.current_frames[0])
    expected = [a for a in index[0]["actions"][1:5]]
    assert parse_actions(answer) == expected, (answer, expected)
