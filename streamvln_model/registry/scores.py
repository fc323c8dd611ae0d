"""Teacher-forced navigation scores: does the model answer each turn's actions from what it sees?

Every position whose target is an action symbol (↑ ← → STOP are single tokens in the Qwen2
vocabulary) is compared with the argmax prediction at the position before it. Scores:

* `action_accuracy`: the fraction of action tokens predicted right, and per action class;
* `per_turn_accuracy`: the mean over assistant turns of the fraction of that turn's actions right;
* `exact_turn_match`: the fraction of turns whose every action is right (the answer a policy
  would act on is whole or it is not, which is why promotion compares this score first);
* `majority_baseline`: the best a model that ignores the images can do with one constant guess.

A turn is one contiguous run of supervised target positions (label != -100) that holds action
tokens: each assistant answer is one run, since the user messages between answers are masked
(conversation.py); the always-learned ChatML tokens next to an answer join its run but are not
actions, and isolated always-learned tokens of other messages hold no action, so make no turn.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import DataLoader

from streamvln_model.model.constants import ACTION_NAMES, ACTION_SYMBOLS, IGNORE_INDEX


@dataclass
class ActionAccuracy:
    accuracy: float
    majority_baseline: float
    actions: int
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NavigationScores:
    """The held-out scores of one model; `per_action` maps an action name to its accuracy and count."""

    action_accuracy: float
    per_turn_accuracy: float
    exact_turn_match: float
    majority_baseline: float
    per_action: dict[str, dict[str, float]]
    turns: int
    actions: int
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScoreTally:
    """Running counts over batches; `scores()` turns them into NavigationScores."""

    correct: Counter = field(default_factory=Counter)  # action id -> right predictions
    seen: Counter = field(default_factory=Counter)  # action id -> targets
    turn_fractions: list[float] = field(default_factory=list)
    exact_turns: int = 0
    samples: int = 0

    def add_sequence(self, predicted: torch.Tensor, targets: torch.Tensor, action_of: dict[int, int]) -> None:
        """One sequence: `predicted[i]` is the argmax that should equal `targets[i]`."""
        for span in turn_spans(targets, action_of):
            right = total = 0
            for token, guess in zip(targets[span].tolist(), predicted[span].tolist(), strict=True):
                if token in action_of:
                    total += 1
                    right += guess == token
                    self.seen[action_of[token]] += 1
                    self.correct[action_of[token]] += guess == token
            self.turn_fractions.append(right / total)
            self.exact_turns += right == total

    def scores(self) -> NavigationScores:
        actions = sum(self.seen.values())
        if actions == 0:
            raise ValueError("no action targets in the evaluation data (is it navigation data?)")
        return NavigationScores(
            action_accuracy=sum(self.correct.values()) / actions,
            per_turn_accuracy=sum(self.turn_fractions) / len(self.turn_fractions),
            exact_turn_match=self.exact_turns / len(self.turn_fractions),
            majority_baseline=self.seen.most_common(1)[0][1] / actions,
            per_action={
                ACTION_NAMES[a]: {"accuracy": self.correct[a] / n, "count": n}
                for a, n in sorted(self.seen.items())
            },
            turns=len(self.turn_fractions),
            actions=actions,
            samples=self.samples,
        )


def action_token_ids(tokenizer) -> dict[int, int]:
    """Action id -> its single vocabulary id; an error if a symbol is not one token."""
    ids = {}
    for action, symbol in ACTION_SYMBOLS.items():
        encoded = tokenizer(symbol, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(
                f"action symbol {symbol!r} is {len(encoded)} tokens in this tokenizer; expected one"
            )
        ids[action] = encoded[0]
    return ids


def turn_spans(targets: torch.Tensor, action_of: dict[int, int]) -> list[slice]:
    """The maximal runs of supervised positions in `targets` (1-D) that hold an action token."""
    supervised = (targets != IGNORE_INDEX).tolist()
    tokens = targets.tolist()
    spans, start = [], None
    for i, on in enumerate([*supervised, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            if any(t in action_of for t in tokens[start:i]):
                spans.append(slice(start, i))
            start = None
    return spans


def tally_logits(
    tally: ScoreTally, logits: torch.Tensor, labels: torch.Tensor, action_of: dict[int, int]
) -> None:
    """Add a batch: logits [B, T, V] from the model, labels [B, T] aligned with its inputs."""
    predicted, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
    for b in range(labels.shape[0]):
        tally.add_sequence(predicted[b], targets[b], action_of)


@torch.no_grad()
def navigation_scores(model, dataset, collator, tokenizer, batch_size: int = 2) -> NavigationScores:
    """Teacher-forced scores of `model` over every sample of `dataset` (in order, no shuffling)."""
    action_of = {token: action for action, token in action_token_ids(tokenizer).items()}
    was_training = model.training
    model.eval()
    tally = ScoreTally()
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
            embeds, mask, positions, labels = model.prepare_multimodal_inputs(
                batch["input_ids"],
                batch["attention_mask"],
                batch["labels"],
                batch["images"],
                batch["time_ids"],
            )
            logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
            tally_logits(tally, logits, labels, action_of)
            tally.samples += labels.shape[0]
    finally:
        model.train(was_training)
    return tally.scores()


def action_accuracy(model, dataset, collator, tokenizer, batch_size: int = 2) -> ActionAccuracy:
    """The per-action accuracy and majority baseline alone (see `navigation_scores`)."""
    scores = navigation_scores(model, dataset, collator, tokenizer, batch_size)
    return ActionAccuracy(
        accuracy=scores.action_accuracy,
        majority_baseline=scores.majority_baseline,
        actions=scores.actions,
        samples=scores.samples,
    )
