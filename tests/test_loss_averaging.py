"""How the accumulated loss is averaged, proven on gradients of the real tiny model and real data.

One optimizer step of `StreamVLNTrainer` (per-device batch 1, 2 accumulation steps) over two
samples with different label-token counts n1 != n2. The gradient the optimizer would apply is
captured in `on_pre_optimizer_step` (no clipping, so it is the raw accumulated gradient) and
compared with gradients computed here by hand, in plain torch, from full-vocabulary logits of the
same two batches (never through the model's own loss code). With S_k the summed token
cross-entropy of micro-batch k:

* default (transformers 5, `num_items_in_batch`): grad of (S1 + S2) / (n1 + n2), every label
  token of the accumulated batch weighs the same;
* `--loss_per_micro_batch` (published, transformers 4.45): grad of (S1/n1 + S2/n2) / 2, each
  micro-batch's mean weighs the same.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import Subset
from transformers import TrainerCallback

from streamvln_model.config.arguments import DataArguments, ModelArguments, TrainingArguments
from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.index.tables import build_index
from streamvln_model.model.builder import load_model, load_prepared_tokenizer
from streamvln_model.model.constants import IGNORE_INDEX
from streamvln_model.model.vision import build_image_processor
from streamvln_model.training.trainer import StreamVLNTrainer
from streamvln_model.training.worker import make_supervised_data_module

# Our TrainingArguments is built directly here, not through arguments.parser() which silences this.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.slow,  # real Trainer steps with gradient capture (~7 s unloaded, 40 s on a busy machine)
]

RTOL = 1e-4  # relative (norm-wise) error allowed between the Trainer's and the hand gradient
ATOL_SHARE = 1e-6  # element-wise atol, as a share of the largest gradient entry


def training_arguments(output_dir, **over) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=["none"],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=0.0,  # the weights stay put; only the gradient is under test
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the captured gradient is the raw accumulated one
        train_sampling_strategy="sequential",
        dataloader_drop_last=False,
        seed=0,
        gradient_checkpointing=False,
        attn_implementation="sdpa",
        **over,
    )


class GradientCapture(TrainerCallback):
    """The accumulated gradient right before the (only) optimizer step."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        assert self.grads is None, "more than one optimizer step"
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("loss_averaging")
    model_args = ModelArguments(
        model_name_or_path=str(tiny_checkpoint), version="qwen_1_5", mm_vision_select_layer=-2
    )  # the published StreamVLN model flags (the tiny tower, like LLaVA's, stores one layer less)
    data_args = DataArguments(
        video_folder=str(synthetic_data), num_frames=32, num_history=8, num_future_steps=4
    )  # the published StreamVLN data flags
    args = training_arguments(out)
    model = load_model(model_args, data_args, args)
    assert model.dtype == torch.float32
    tokenizer, spec = load_prepared_tokenizer(model_args)
    processor = build_image_processor(model.get_vision_tower().config)
    index, _ = build_index(load_episodes(str(synthetic_data)), 32, 8, 4)
    module = make_supervised_data_module(index, tokenizer, spec, processor, data_args, args)
    dataset, collator = module["train_dataset"], module["data_collator"]

    # Label tokens a causal LM predicts (position 0 is never a target); text only, no pixels.
    counts = [sum(label != IGNORE_INDEX for label in dataset.plan(i).labels[1:]) for i in range(len(dataset))]
    picks = [counts.index(min(counts)), counts.index(max(counts))]
    assert counts[picks[0]] < counts[picks[1]], counts
    batches = [collator([dataset[i]]) for i in picks]

    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    summed, n_tokens = [], []
    for batch in batches:
        grads, n = summed_ce_gradient(model, batch)
        summed.append(grads)
        n_tokens.append(n)
    # What the Trainer counts for num_items_in_batch (collator labels, shifted): the same tokens.
    assert n_tokens == [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
    assert n_tokens == [counts[i] for i in picks]
    model.zero_grad(set_to_none=True)
    return {
        "model": model,
        "initial": initial,
        "tokenizer": tokenizer,
        "train_dataset": Subset(dataset, picks),
        "collator": collator,
        "summed": summed,
        "n": n_tokens,
        "out": out,
    }


def summed_ce_gradient(model, batch) -> tuple[dict[str, torch.Tensor], int]:
    """Gradient of the SUMMED next-token cross-entropy of one micro-batch, by hand.

    Splices the frames in, runs the decoder, projects EVERY position onto the full vocabulary
    and sums plain `F.cross_entropy` over the shifted labels.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    embeds, mask, positions, labels = model.prepare_multimodal_inputs(
        batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"], batch["time_ids"]
    )
    hidden = model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    logits = model.lm_head(hidden[:, :-1]).float()
    targets = labels[:, 1:]
    loss = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, int((targets != IGNORE_INDEX).sum())


def trainer_gradient(setup, flag: bool) -> dict[str, torch.Tensor]:
    model = setup["model"]
    model.load_state_dict(setup["initial"])
    model.zero_grad(set_to_none=True)
    capture = GradientCapture()
    trainer = StreamVLNTrainer(
        model=model,
        args=training_arguments(setup["out"] / f"flag_{flag}", loss_per_micro_batch=flag),
        processing_class=setup["tokenizer"],
        train_dataset=setup["train_dataset"],
        data_collator=setup["collator"],
        callbacks=[capture],
    )
    assert trainer.model_accepts_loss_kwargs is not flag
    trainer.train()
    assert trainer.state.global_step == 1
    assert capture.grads is not None
    model.zero_grad(set_to_none=True)
    return capture.grads


def expected_gradient(setup, flag: bool) -> dict[str, torch.Tensor]:
    (g1, g2), (n1, n2) = setup["summed"], setup["n"]
    if flag:  # (S1/n1 + S2/n2) / 2
        return {k: (g1[k] / n1 + g2[k] / n2) / 2 for k in g1}
    return {k: (g1[k] + g2[k]) / (n1 + n2) for k in g1}  # (S1 + S2) / (n1 + n2)


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[k].flatten() for k in sorted(grads)])


def relative_error(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    a, e = flat(actual), flat(expected)
    return float((a - e).norm() / e.norm())


def assert_gradients_match(actual, expected) -> float:
    assert set(actual) == set(expected), sorted(set(actual) ^ set(expected))
    atol = ATOL_SHARE * float(flat(expected).abs().max())
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=RTOL, atol=atol, msg=name)
    error = relative_error(actual, expected)
    assert error < RTOL, error
    return error


@pytest.mark.parametrize("flag", [False, True], ids=["default_token_mean", "loss_per_micro_batch"])
def test_trainer_gradient_follows_its_averaging_formula(setup, flag: bool) -> None:
    actual = trainer_gradient(setup, flag)
    expected = expected_gradient(setup, flag)
    error = assert_gradients_match(actual, expected)
    other = relative_error(actual, expected_gradient(setup, not flag))
    print(f"\nloss_per_micro_batch={flag}: n={setup['n']}, relative error {error:.2e} vs its formula, "
          f"{other:.2e} vs the other formula")  # fmt: skip
    # ... and the Trainer's gradient is far from the other formula's.
    assert other > 1000 * RTOL, other


def test_the_two_averagings_differ_measurably(setup) -> None:
    n1, n2 = setup["n"]
    assert n1 != n2
    token_mean, micro_mean = expected_gradient(setup, False), expected_gradient(setup, True)
    difference = relative_error(token_mean, micro_mean)
    print(f"\nn={setup['n']}: ||token_mean - micro_mean|| / ||micro_mean|| = {difference:.3f}")
    assert difference > 0.05, difference
    # Exact relation: the token mean weighs micro-batch k's mean by n_k/(n1+n2), the published
    # loss by 1/2, so with n1 < n2 the shorter sample counts more under --loss_per_micro_batch.
    g1, g2 = setup["summed"]
    name = "lm_head.weight"
    mean1, mean2 = g1[name] / n1, g2[name] / n2
    torch.testing.assert_close(token_mean[name], (n1 * mean1 + n2 * mean2) / (n1 + n2))
    torch.testing.assert_close(micro_mean[name], (mean1 + mean2) / 2)
