"""Precision as published: bf16 loads bf16; fp16 loads fp32 (AMP keeps fp32 master weights).

What the optimizer holds is read from a real `StreamVLNTrainer.create_optimizer()` over the tiny
checkpoint loaded with `weight_dtype`. fp16 on a CPU host is either refused by
`precision_problems` or must train one real step (it does with accelerate 1.15, in fp32).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from streamvln_model import StreamVLNForCausalLM
from streamvln_model.config.arguments import ModelArguments, TrainingArguments
from streamvln_model.data.datasets.collator import DataCollatorForNavigation
from streamvln_model.data.datasets.navigation import VLNActionDataset
from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.index.tables import build_index
from streamvln_model.model.builder import load_prepared_tokenizer
from streamvln_model.model.precision import precision_problems, weight_dtype
from streamvln_model.model.vision import build_image_processor
from streamvln_model.training.trainer import StreamVLNTrainer


def training_args(tmp_path, **flags) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=["none"], save_strategy="no", **flags
    )


def optimizer_dtypes(checkpoint, args: TrainingArguments) -> set[torch.dtype]:
    model = StreamVLNForCausalLM.from_pretrained(checkpoint, dtype=weight_dtype(args))
    trainer = StreamVLNTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    return {p.dtype for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"fp16": True}, torch.float32),
        ({"fp16": True, "mm_projector_lr": 1e-4, "mm_vision_tower_lr": 1e-5}, torch.float32),
        ({"bf16": True}, torch.bfloat16),
        ({}, torch.float32),
    ],
)
def test_optimizer_holds_the_published_dtype(tiny_checkpoint, tmp_path, flags, expected) -> None:
    args = training_args(tmp_path, **flags)
    assert weight_dtype(args) == expected
    assert optimizer_dtypes(tiny_checkpoint, args) == {expected}


def test_conflicting_flags_are_a_problem() -> None:
    # transformers refuses this in TrainingArguments too; preflight says it with the fix.
    (problem,) = precision_problems(SimpleNamespace(fp16=True, bf16=True), "cuda")
    assert "--fp16 and --bf16" in problem and "Fix:" in problem
    assert precision_problems(SimpleNamespace(fp16=False, bf16=True), "cpu") == []
    assert precision_problems(SimpleNamespace(fp16=True, bf16=False), "cuda:0") == []


@pytest.mark.slow  # a real Trainer step (~7 s)
def test_fp16_on_cpu_is_refused_or_trains_one_step(tiny_checkpoint, synthetic_data, tmp_path) -> None:
    args = training_args(tmp_path, fp16=True, max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3)
    problems = precision_problems(args, "cpu")
    if problems:
        assert any("--fp16" in p and "Fix:" in p for p in problems), problems
        return
    model = StreamVLNForCausalLM.from_pretrained(tiny_checkpoint, dtype=weight_dtype(args))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokenizer, spec = load_prepared_tokenizer(
        ModelArguments(model_name_or_path=str(tiny_checkpoint), version="qwen_1_5")
    )
    index, _ = build_index(load_episodes(str(synthetic_data)), 32, 8, 4)
    dataset = VLNActionDataset(index, tokenizer, spec, build_image_processor(model.get_vision_tower().config))
    trainer = StreamVLNTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForNavigation(tokenizer.pad_token_id, 4096),
    )
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert not torch.equal(params["lm_head.weight"], before["lm_head.weight"])
