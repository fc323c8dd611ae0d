"""The demo's training through the real flow: 2 DDP ranks (torchrun), a real MLflow server.

The run is the session's `finished_training` (tests/conftest.py: `flows.demo.run_demo`).

Acceptance: the loss falls below half of its first value over >= 30 optimiser steps, every
step reaches MLflow, and the registered model pulled with `models:/<name>@<alias>` in a fresh
process loads and gives the same logits as the saved folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import torch

FRESH_PROCESS_LOGITS = r"""
import json, sys, mlflow, torch
from streamvln_model import StreamVLNForCausalLM
from streamvln_model.registry.pyfunc import checkpoint_path
mlflow.set_tracking_uri(sys.argv[1])
local = mlflow.artifacts.download_artifacts(artifact_uri=sys.argv[2], dst_path=sys.argv[3])
model = StreamVLNForCausalLM.from_pretrained(checkpoint_path(local)).eval()
batch = torch.load(sys.argv[4])
with torch.no_grad():
    logits = model(**batch).logits
torch.save(logits, sys.argv[5])
policy = mlflow.pyfunc.load_model(sys.argv[2])
print(json.dumps(policy.predict([json.loads(sys.argv[6])])))
"""


def test_two_ranks_learn_and_every_step_reaches_mlflow(finished_training, mlflow_server):
    assert finished_training.tracking_uri == mlflow_server.uri
    assert finished_training.world_size == 2
    client = mlflow.MlflowClient(mlflow_server.uri)
    history = sorted(client.get_metric_history(finished_training.mlflow_run_id, "loss"), key=lambda m: m.step)
    steps = [m.step for m in history]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 30
    first, last = history[0].value, history[-1].value
    assert last < 0.5 * first, (first, last)
    run = client.get_run(finished_training.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.num_history"] == "8"
    assert run.data.tags["data.fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plan")}
    assert {"plan/resolved_arguments.json", "plan/data_summary.json", "plan/plan.json"} <= artifacts


def test_registered_model_in_fresh_process_matches_saved_folder(finished_training, mlflow_server, tmp_path):
    from streamvln_model import StreamVLNForCausalLM
    from streamvln_model.config.arguments import ModelArguments
    from streamvln_model.data.datasets.collator import DataCollatorForNavigation
    from streamvln_model.data.datasets.navigation import VLNActionDataset
    from streamvln_model.data.formats.annotations import load_episodes
    from streamvln_model.data.index.tables import build_index
    from streamvln_model.model.builder import load_prepared_tokenizer
    from streamvln_model.model.vision import build_image_processor

    saved = Path(finished_training.output_dir)
    model = StreamVLNForCausalLM.from_pretrained(saved).eval()
    tokenizer, spec = load_prepared_tokenizer(
        ModelArguments(model_name_or_path=str(saved), version="qwen_1_5")
    )
    index, _ = build_index(load_episodes(str(finished_training.video_folder)), 32, 8, 4)
    dataset = VLNActionDataset(index, tokenizer, spec, build_image_processor(model.get_vision_tower().config))
    with_history = next(i for i in range(len(dataset)) if dataset.plan(i).start > 0)
    batch = DataCollatorForNavigation(tokenizer.pad_token_id, 4096)([dataset[0], dataset[with_history]])
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "images", "time_ids")}
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**batch).logits

    plan = dataset.plan(0)
    request = {"instruction": plan.instruction, "current_frame": plan.current_frames[0], "history_frames": []}
    command = [sys.executable, "-c", FRESH_PROCESS_LOGITS, mlflow_server.uri, finished_training.model_uri,
               str(tmp_path / "download"), str(tmp_path / "batch.pt"), str(tmp_path / "logits.pt"),
               json.dumps(request)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pulled = torch.load(tmp_path / "logits.pt")
    assert pulled.shape == expected.shape
    torch.testing.assert_close(pulled, expected, rtol=0, atol=0)
    prediction = json.loads(done.stdout.strip().splitlines()[-1])[0]
    assert set(prediction) == {"text", "actions"}
    assert all(a in (0, 1, 2, 3) for a in prediction["actions"])
