"""Freezing reproduces the published StreamVLN/LLaVA-NeXT decision, on real weights and a real step.

Each case states its expected trainable set from the published rules, written here by hand in
terms of the model's parameter groups (never by calling the code under test). Then ONE AdamW step
on a real batch (dataset + collator, as training builds them) must change only parameters of
that set, and every expected parameter that received a non-zero gradient must change.
"""

from __future__ import annotations

import pytest
import torch

from streamvln_model import StreamVLNForCausalLM
from streamvln_model.config.arguments import ModelArguments, TrainingArguments
from streamvln_model.config.sample_shape import SampleShape
from streamvln_model.data.datasets.collator import DataCollatorForNavigation
from streamvln_model.data.datasets.navigation import VLNActionDataset
from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.index.tables import build_index
from streamvln_model.model.builder import load_prepared_tokenizer, meta_model
from streamvln_model.model.freezing import (
    apply_freezing,
    freezing_plan,
    no_trainable_problem,
    parse_tunable_parts,
    trainable_names,
    trained_parts,
)
from streamvln_model.model.vision import build_image_processor

TOWER, PROJECTOR, DECODER, HEAD, NEWLINE = "tower", "projector", "decoder", "lm_head", "newline"
ALL = (TOWER, PROJECTOR, DECODER, HEAD, NEWLINE)
DEFAULT = (DECODER, HEAD, NEWLINE, PROJECTOR)  # legacy flags, none set: the tower alone is frozen
LANGUAGE = (DECODER, HEAD, NEWLINE)  # mm_language_model: every name without the multimodal keys


def group(name: str) -> str:
    """The parameter group of a LLaVA-layout name."""
    if name.startswith("model.vision_tower."):
        return TOWER
    if name.startswith("model.mm_projector."):
        return PROJECTOR
    if name == "lm_head.weight":
        return HEAD
    if name == "model.image_newline":
        return NEWLINE
    assert name.startswith(("model.embed_tokens.", "model.layers.", "model.norm.")), name
    return DECODER


# (ModelArguments overrides, TrainingArguments overrides, groups expected to train)
CASES = {
    "no_flags": ({}, {}, DEFAULT),
    "freeze_backbone": ({"freeze_backbone": True}, {}, (HEAD,)),
    "tune_mm_mlp_adapter": ({"tune_mm_mlp_adapter": True}, {}, (PROJECTOR,)),
    "tune_mm_mlp_adapter+unfreeze_mm_vision_tower": (
        {"tune_mm_mlp_adapter": True, "unfreeze_mm_vision_tower": True},
        {},
        (PROJECTOR, TOWER),
    ),
    "freeze_mm_mlp_adapter": ({}, {"freeze_mm_mlp_adapter": True}, LANGUAGE),
    "unfreeze_mm_vision_tower": ({"unfreeze_mm_vision_tower": True}, {}, ALL),
    "tune_mm_vision_resampler+unfreeze_mm_vision_tower": (
        {"tune_mm_vision_resampler": True, "unfreeze_mm_vision_tower": True},
        {},
        (TOWER,),
    ),
    "freeze_mm_vision_resampler": ({}, {"freeze_mm_vision_resampler": True}, DEFAULT),
    "unfreeze_language_model": ({"unfreeze_language_model": True}, {}, DEFAULT),  # never read
    "freeze_backbone+unfreeze_mm_vision_tower": (
        {"freeze_backbone": True, "unfreeze_mm_vision_tower": True},
        {},
        (HEAD, TOWER),
    ),
    "parts:mm_mlp_adapter": ({"mm_tunable_parts": "mm_mlp_adapter"}, {}, (PROJECTOR,)),
    "parts:mm_vision_tower": ({"mm_tunable_parts": "mm_vision_tower"}, {}, (TOWER,)),
    "parts:mm_language_model": ({"mm_tunable_parts": "mm_language_model"}, {}, LANGUAGE),
    "parts:mm_mlp_adapter,mm_language_model": (
        {"mm_tunable_parts": "mm_mlp_adapter,mm_language_model"},
        {},
        (*LANGUAGE, PROJECTOR),
    ),
    "parts:mm_vision_tower,mm_mlp_adapter": (
        {"mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter"},
        {},
        (TOWER, PROJECTOR),
    ),
    "parts:all_three": ({"mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model"}, {}, ALL),
    # Everything is frozen first in this branch, so freeze_backbone changes nothing.
    "parts:mm_language_model+freeze_backbone": (
        {"mm_tunable_parts": "mm_language_model", "freeze_backbone": True},
        {},
        LANGUAGE,
    ),
    # ... and legacy flags are not read at all.
    "parts:mm_mlp_adapter+legacy_flags": (
        {"mm_tunable_parts": "mm_mlp_adapter", "unfreeze_mm_vision_tower": True, "tune_mm_mlp_adapter": True},
        {"freeze_mm_mlp_adapter": True},
        (PROJECTOR,),
    ),
}

NOTHING_TRAINS = {
    "tune_mm_vision_resampler": ({"tune_mm_vision_resampler": True}, {}),
    "tune_mm_mlp_adapter+freeze_mm_mlp_adapter": (
        {"tune_mm_mlp_adapter": True},
        {"freeze_mm_mlp_adapter": True},
    ),
    "parts:mm_vision_resampler": ({"mm_tunable_parts": "mm_vision_resampler"}, {}),
    "parts:mm_lora_layer": ({"mm_tunable_parts": "mm_lora_layer"}, {}),
    "parts:empty": ({"mm_tunable_parts": ""}, {}),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("freezing_out"))


def arguments(checkpoint, run_dir: str, model_over: dict, train_over: dict):
    model_args = ModelArguments(model_name_or_path=str(checkpoint), **model_over)
    training_args = TrainingArguments(output_dir=run_dir, use_cpu=True, report_to=["none"], **train_over)
    return model_args, training_args


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, synthetic_data, run_dir):
    """One model, its initial weights and one real batch (with history) shared by all cases."""
    model = StreamVLNForCausalLM.from_pretrained(tiny_checkpoint)
    model.train()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tokenizer, spec = load_prepared_tokenizer(
        ModelArguments(model_name_or_path=str(tiny_checkpoint), version="qwen_1_5")
    )
    index, _ = build_index(load_episodes(str(synthetic_data)), 32, 8, 4)  # the published defaults
    processor = build_image_processor(model.get_vision_tower().config)
    dataset = VLNActionDataset(index, tokenizer, spec, processor, SampleShape(32, 8, 4))
    starts = index["start"]
    picks = [starts.index(0), next(i for i, s in enumerate(starts) if s > 0)]  # no history, history
    batch = DataCollatorForNavigation(tokenizer.pad_token_id, 4096)([dataset[i] for i in picks])
    return model, initial, batch


@pytest.mark.slow  # a real optimizer step per case (~2 s each, 22 cases)
@pytest.mark.parametrize("case", list(CASES))
def test_trainable_set_and_one_real_step(case: str, setup, tiny_checkpoint, run_dir) -> None:
    model, initial, batch = setup
    model_over, train_over, groups = CASES[case]
    model.load_state_dict(initial)
    names = [n for n, _ in model.named_parameters()]
    expected = {n for n in names if group(n) in groups}

    model_args, training_args = arguments(tiny_checkpoint, run_dir, model_over, train_over)
    plan = freezing_plan(model_args, training_args)
    counts = apply_freezing(model, plan)
    params = dict(model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == expected
    assert counts["trainable"] == sum(params[n].numel() for n in expected)
    assert trained_parts(counts) == sorted(
        {
            "mm_vision_tower" if g == TOWER else "mm_mlp_adapter" if g == PROJECTOR else "mm_language_model"
            for g in groups
        },
        key=["mm_mlp_adapter", "mm_vision_resampler", "mm_vision_tower", "mm_language_model"].index,
    )
    # The flow plans on a meta-device model: same names, same decision.
    assert trainable_names(meta_model(model.config), plan) == expected
    assert no_trainable_problem(names, plan) is None

    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.AdamW([params[n] for n in sorted(expected)], lr=1e-3, weight_decay=0.0)
    model(**batch).loss.backward()
    graded = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    optimizer.step()
    changed = {n for n, p in params.items() if not torch.equal(p.detach(), initial[n])}

    assert graded <= expected, sorted(graded - expected)
    assert changed <= expected, sorted(changed - expected)
    assert changed == graded, (sorted(graded - changed), sorted(changed - graded))
    # Every trained group that the forward uses gets a gradient (image_newline is unused by the
    # navigation forward, and post_layernorm is not part of the penultimate-layer features).
    for used in set(groups) - {NEWLINE}:
        assert any(group(n) == used for n in changed), f"{case}: no {used} parameter changed"
    unused_tower = {n for n in expected if ".post_layernorm." in n}
    assert not unused_tower & changed


@pytest.mark.parametrize("case", list(NOTHING_TRAINS))
def test_flags_that_train_nothing_are_reported(case: str, setup, tiny_checkpoint, run_dir) -> None:
    model, _, _ = setup
    model_over, train_over = NOTHING_TRAINS[case]
    plan = freezing_plan(*arguments(tiny_checkpoint, run_dir, model_over, train_over))
    names = [n for n, _ in model.named_parameters()]
    problem = no_trainable_problem(names, plan)
    assert problem is not None
    assert "no parameter of this model would train" in problem and "Fix:" in problem
    # It names the deciding flags first.
    assert problem.startswith("--mm_tunable_parts") == ("mm_tunable_parts" in model_over), problem


def test_unknown_tunable_part_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown part\(s\) mm_projector; choose from"):
        parse_tunable_parts("mm_mlp_adapter,mm_projector")
    assert parse_tunable_parts(None) is None
    assert parse_tunable_parts(" mm_mlp_adapter , mm_language_model ") == (
        "mm_mlp_adapter",
        "mm_language_model",
    )
