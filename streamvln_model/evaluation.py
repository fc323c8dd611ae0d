"""Teacher-forced action accuracy: does the model answer each turn's actions from what it sees?

For every assistant position whose target is an action symbol (↑ ← → STOP are single tokens in
the Qwen2 vocabulary), compare the argmax prediction with the target. The majority baseline is
the best any model that ignores images can do with a constant guess on the same targets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader

from .constants import ACTION_SYMBOLS


@dataclass
class ActionAccuracy:
    accuracy: float
    majority_baseline: float
    actions: int
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


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


@torch.no_grad()
def action_accuracy(model, dataset, collator, tokenizer, batch_size: int = 2) -> ActionAccuracy:
    action_ids = torch.tensor(sorted(action_token_ids(tokenizer).values()))
    was_training = model.training
    model.eval()
    correct, total, seen = 0, 0, Counter()
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
        embeds, mask, positions, labels = model.prepare_multimodal_inputs(
            batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"], batch["time_ids"]
        )
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        predicted, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
        is_action = torch.isin(targets, action_ids)
        correct += int((predicted[is_action] == targets[is_action]).sum())
        total += int(is_action.sum())
        seen.update(targets[is_action].tolist())
    model.train(was_training)
    if total == 0:
        raise ValueError("no action targets in the evaluation data")
    majority = seen.most_common(1)[0][1] / total
    return ActionAccuracy(
        accuracy=correct / total, majority_baseline=majority, actions=total, samples=len(dataset)
    )
