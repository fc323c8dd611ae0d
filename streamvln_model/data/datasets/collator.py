"""Batch navigation samples: pad text, keep per-sample frame stacks (their counts differ)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamvln_model.model.constants import IGNORE_INDEX


@dataclass
class DataCollatorForNavigation:
    pad_token_id: int
    model_max_length: int
    padding_side: str = "right"

    def _pad(self, rows: list[torch.Tensor], value: int) -> torch.Tensor:
        longest = max(r.shape[0] for r in rows)
        out = torch.full((len(rows), longest), value, dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            if self.padding_side == "left":
                out[i, longest - row.shape[0] :] = row
            else:
                out[i, : row.shape[0]] = row
        return out

    def __call__(self, instances: list[dict]) -> dict:
        ids = [x["input_ids"][: self.model_max_length] for x in instances]
        labels = [x["labels"][: self.model_max_length] for x in instances]
        return {
            "input_ids": self._pad(ids, self.pad_token_id),
            "labels": self._pad(labels, IGNORE_INDEX),
            "attention_mask": self._pad([torch.ones_like(x) for x in ids], 0),
            "images": [x["images"] for x in instances],
            "time_ids": [x["time_ids"] for x in instances],
            "task_ids": torch.tensor([x.get("task_type", 0) for x in instances]),
        }
