"""A checkpoint is resumable only once every rank finished writing it.

The Trainer writes `partial-checkpoints/checkpoint-N` and renames it to `checkpoint-N` when
complete; a fault in between leaves a folder no resume picks, removed at the next start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.trainer_utils import get_last_checkpoint

from streamvln_model.checkpoint.staging import STAGING_DIR, resume_checkpoint
from streamvln_model.config.arguments import TrainingArguments
from streamvln_model.training.trainer import StreamVLNTrainer


class Regression(nn.Module):
    """The smallest model the Trainer trains and checkpoints (no pretrained weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, labels=None):
        return {"loss": ((self.linear(x).squeeze(-1) - labels) ** 2).mean()}


class CrashingSave(StreamVLNTrainer):
    """A fault at `crash_step` while the checkpoint is half written (model saved, RNG state not)."""

    crash_step = 4

    def _save_rng_state(self, output_dir: str) -> None:
        if self.state.global_step == self.crash_step:
            raise RuntimeError("injected fault while saving")
        super()._save_rng_state(output_dir)


def make_trainer(cls, output_dir: Path, max_steps: int) -> StreamVLNTrainer:
    torch.manual_seed(0)
    data = [{"x": torch.randn(2), "labels": torch.randn(())} for _ in range(32)]
    args = TrainingArguments(
        output_dir=str(output_dir),
        use_cpu=True,
        max_steps=max_steps,
        save_steps=2,
        save_total_limit=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        gradient_checkpointing=False,
    )
    return cls(model=Regression(), args=args, train_dataset=data)


def test_fault_while_saving_leaves_no_resumable_checkpoint(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected fault"):
        make_trainer(CrashingSave, output, max_steps=6).train()

    assert sorted(p.name for p in output.iterdir()) == ["checkpoint-2", STAGING_DIR]
    assert (output / STAGING_DIR / "checkpoint-4" / "model.safetensors").is_file()  # half written
    assert get_last_checkpoint(str(output)) == str(output / "checkpoint-2")

    last = resume_checkpoint(output, owner=True)
    assert last == str(output / "checkpoint-2")
    assert not (output / STAGING_DIR).exists()  # the interrupted one is gone

    make_trainer(StreamVLNTrainer, output, max_steps=6).train(resume_from_checkpoint=last)
    # save_total_limit=2 rotates among complete checkpoints only; no staging folder is left.
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    state = json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]


def test_resume_picks_the_complete_checkpoint_not_a_newer_partial_one(tmp_path):
    complete = tmp_path / "checkpoint-2"
    complete.mkdir()
    (complete / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    partial = tmp_path / STAGING_DIR / "checkpoint-8"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"truncated")

    assert resume_checkpoint(tmp_path, owner=False) == str(complete)
    assert partial.is_dir()  # only the rank that owns the folder removes it
    assert resume_checkpoint(tmp_path, owner=True) == str(complete)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_no_output_folder_means_a_fresh_start(tmp_path):
    assert resume_checkpoint(tmp_path / "missing", owner=True) is None
