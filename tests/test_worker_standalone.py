"""The worker alone: `torchrun -m streamvln_model.train` with the published StreamVLN flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamvln_model import StreamVLNForCausalLM

pytestmark = pytest.mark.processes  # torchrun workers

PUBLISHED_FLAGS = [
    "--version", "qwen_1_5", "--group_by_task", "False",
    "--num_history", "8", "--num_future_steps", "4", "--num_frames", "32",
    "--mm_tunable_parts=mm_vision_tower,mm_mlp_adapter,mm_language_model",
    "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
    "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
    "--num_train_epochs", "1", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
    "--evaluation_strategy", "no", "--save_strategy", "no", "--learning_rate", "1e-3",
    "--mm_vision_tower_lr", "5e-4", "--weight_decay", "0.", "--warmup_ratio", "0.03",
    "--lr_scheduler_type", "constant_with_warmup", "--logging_steps", "1", "--model_max_length", "32768",
    "--gradient_checkpointing", "True", "--dataloader_num_workers", "0", "--lazy_preprocess", "True",
    "--report_to", "none",
]  # fmt: skip


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port: other tests may run torchrun at the same time
        "--nproc_per_node=2",
        "-m",
        "streamvln_model.train",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=600, env=env)


def test_published_command_line_trains_two_ranks(tiny_checkpoint, synthetic_data, tmp_path):
    out = tmp_path / "out"
    done = _torchrun([
        "--model_name_or_path", str(tiny_checkpoint), "--video_folder", str(synthetic_data),
        "--output_dir", str(out), "--max_steps", "3", *PUBLISHED_FLAGS,
    ])  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    progress = [
        json.loads(line.split(" ", 1)[1])
        for line in done.stdout.splitlines()
        if line.startswith("streamvln-")
    ]
    assert [p["step"] for p in progress if "loss" in p] == [1, 2, 3]
    assert {p["world_size"] for p in progress} == {2}  # one gloo group: the worker added --use_cpu itself
    assert "no CUDA device on this host: adding --use_cpu true --ddp_backend gloo" in done.stdout
    assert "substitution: --attn_implementation flash_attention_2" in done.stdout  # the published default
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    model = StreamVLNForCausalLM.from_pretrained(out)
    assert model.config.use_cache is True and model.config.num_history == 8
    assert (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()


def test_bad_data_fails_before_the_model_loads(tiny_checkpoint, synthetic_data, tmp_path):
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    done = _torchrun([
        "--model_name_or_path", str(tiny_checkpoint), "--video_folder", f"{synthetic_data},{broken}",
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--ddp_backend", "gloo", *PUBLISHED_FLAGS,
    ])  # fmt: skip
    assert done.returncode != 0
    logs = done.stdout + done.stderr
    assert f"{broken.resolve()}/annotations.json: missing" in logs
    assert "Loading weights" not in logs
    assert not Path(tmp_path / "out" / "model.safetensors").exists()
