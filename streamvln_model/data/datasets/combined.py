"""Stage-two co-training: the settings every format reads, the combined dataset, the task sampler.

Published behaviour (InternRobotics/StreamVLN `streamvln/streamvln_train.py` `CombineDataset` and
`make_supervised_data_module` with `--multi_task_training`; its LLaVA-NeXT fork's
`llava/train/llava_trainer.py` `get_task_length_grouped_indices` for `--group_by_task`):
navigation, QA, ScanQA and MMC4 datasets are concatenated, every sample keeps its task id, and
the sampler shuffles within each task, cuts each task into megabatches of
`per_device_batch * world_size * grad_accum` samples, drops each task's last megabatch and
shuffles the megabatches, so no optimizer step mixes tasks.

How that composes with distributed data parallel (transformers 5 `Trainer._get_dataloader`,
accelerate `prepare_data_loader` / `BatchSamplerShard` with `split_batches=False`): every rank
runs the same sampler (same seed and epoch, so the same index stream), the `DataLoader` cuts the
stream into batches of `per_device_batch`, and rank `r` takes batches `r, r + W, r + 2W, ...`.
A megabatch is exactly `W * grad_accum` consecutive batches, so the `grad_accum` micro-batches of
one optimizer step on every rank come from the same megabatch: one task per step on all ranks.
The sampler's length is a multiple of the megabatch, so accelerate never wraps around to pad
(which would mix tasks in the last step).

Differences from the published sampler, on purpose: only a *partial* last megabatch is dropped
(the published slice `[:-1]` also drops a full one); the shuffle is seeded by `(seed, epoch)`
instead of the global torch RNG, so every rank agrees without relying on identical RNG state;
and `len()` is the number of indices actually yielded (the published sampler reports the
dataset length, so the Trainer plans more steps than an epoch has).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase, SiglipImageProcessorPil

from streamvln_model.data import locations as storage
from streamvln_model.data.media.images import preprocess_images
from streamvln_model.data.validation.records import NAVIGATION, Problem
from streamvln_model.model.constants import IMAGE_TOKEN_INDEX
from streamvln_model.model.conversation import TokenSpec, tokenize_conversation


@dataclass(frozen=True)
class CoTrainingSettings:
    """The DataArguments fields the co-training formats read (their defaults live in arguments.py)."""

    frames_upbound: int
    force_sample: bool
    add_time_instruction: bool
    video_fps: float
    num_frames: int

    @classmethod
    def from_arguments(cls, data_args: Any) -> CoTrainingSettings:
        """From a parsed `DataArguments` (None fields, allowed by its types, read as 0 / False)."""
        return cls(
            frames_upbound=int(data_args.frames_upbound or 0),
            force_sample=bool(data_args.force_sample),
            add_time_instruction=bool(data_args.add_time_instruction),
            video_fps=float(data_args.video_fps or 0),
            num_frames=int(data_args.num_frames or 0),
        )

    def problems(self, source: str = "arguments") -> list[Problem]:
        """Settings that would sample no frames or crash the frame sampling."""
        found = []
        if self.frames_upbound < 0:
            found.append(
                Problem(source, "frames_upbound", f"is {self.frames_upbound}. Fix: 0 (no cap) or more")
            )
        if self.force_sample and self.frames_upbound <= 0:
            found.append(
                Problem(
                    source,
                    "force_sample",
                    "samples exactly --frames_upbound frames, which is 0. "
                    "Fix: set --frames_upbound (StreamVLN: 32)",
                )
            )
        if self.video_fps <= 0:
            found.append(
                Problem(source, "video_fps", f"is {self.video_fps}. Fix: a positive rate (default 1)")
            )
        return found


class CoTrainingDataset(Dataset):
    """Shared part of the QA, ScanQA and MMC4 datasets: rows from an Arrow table, ids, pixels.

    Subclasses set `task` and implement `build(i) -> (conversation, images)`; the conversation is
    tokenised by the one qwen_1_5 masking implementation, and the count of `<image>` placeholders
    must equal the images returned (the model splices one visual block per placeholder).
    """

    task: int = -1

    def __init__(
        self,
        table: datasets.Dataset,
        roots: list[str],
        tokenizer: PreTrainedTokenizerBase,
        token_spec: TokenSpec,
        image_processor: SiglipImageProcessorPil,
        settings: CoTrainingSettings,
        seed: int = 0,
    ):
        self.table = table
        self.roots = list(roots)
        self.tokenizer = tokenizer
        self.token_spec = token_spec
        self.image_processor = image_processor
        self.settings = settings
        self.seed = seed

    def __len__(self) -> int:
        return len(self.table)

    def location(self, row: dict, relative: str) -> str:
        """Where a root-relative media path is mounted on this machine."""
        return storage.join(self.roots[row["root"]], relative)

    def build(self, i: int) -> tuple[list[dict[str, str]], list[Image.Image]]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        conversation, images = self.build(i)
        input_ids, labels = tokenize_conversation(self.tokenizer, self.token_spec, conversation)
        placeholders = input_ids.count(IMAGE_TOKEN_INDEX)
        if placeholders != len(images):
            raise ValueError(
                f"sample {self.table[i]['sample_id']}: {placeholders} <image> placeholders for "
                f"{len(images)} images; the index and the conversation builder disagree"
            )
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "images": preprocess_images(self.image_processor, images),
            "time_ids": torch.zeros(0, dtype=torch.long),
            "task_type": self.task,
        }


class CombinedDataset(Dataset):
    """The concatenation of the task datasets; `task_of(i)` is the task of sample `i`.

    A dataset without a `task` attribute (the navigation dataset) is task 0, as published.
    """

    def __init__(self, parts: list[Dataset]):
        if not parts:
            raise ValueError("CombinedDataset needs at least one dataset")
        self.datasets = list(parts)
        self.lengths = [len(part) for part in self.datasets]
        self.ends = np.cumsum(self.lengths).tolist()
        self.part_tasks = [int(getattr(part, "task", NAVIGATION)) for part in self.datasets]

    def __len__(self) -> int:
        return self.ends[-1]

    def locate(self, i: int) -> tuple[int, int]:
        """(dataset position, index inside it) of combined index `i`."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        part = bisect.bisect_right(self.ends, i)
        start = self.ends[part - 1] if part else 0
        return part, i - start

    def __getitem__(self, i: int):
        part, inner = self.locate(i)
        return self.datasets[part][inner]

    @property
    def tasks(self) -> np.ndarray:
        """The task id of every sample, in order (one int8 each)."""
        return np.repeat(np.asarray(self.part_tasks, dtype=np.int8), self.lengths)


def megabatch_size(per_device_batch: int, world_size: int, grad_accum: int) -> int:
    """Samples one optimizer step consumes across all ranks."""
    return per_device_batch * world_size * grad_accum


class GroupByTaskSampler(Sampler[int]):
    """Single-task megabatches in a seeded random order (see the module docstring).

    `tasks` is the task id of each sample (`CombinedDataset.tasks`) or the published
    `(task, length)` pairs of `--group_by_task`. `dropped` tells how many samples of each task
    one epoch leaves out.
    """

    def __init__(self, tasks: Sequence[int] | Sequence[tuple[int, int]], megabatch: int, seed: int = 0):
        if megabatch < 1:
            raise ValueError(f"megabatch must be at least 1, got {megabatch}")
        values = [t[0] if isinstance(t, tuple) else t for t in tasks]
        self.tasks = np.asarray(values, dtype=np.int64)
        self.megabatch = megabatch
        self.seed = seed
        self.epoch = 0
        counts = Counter(self.tasks.tolist())
        self.dropped = {task: count % megabatch for task, count in sorted(counts.items())}
        self._length = sum(count - count % megabatch for count in counts.values())

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) before each epoch: a new order per epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        megabatches: list[np.ndarray] = []
        for task in sorted(set(self.tasks.tolist())):
            members = rng.permutation(np.flatnonzero(self.tasks == task))
            full = len(members) - len(members) % self.megabatch
            megabatches.extend(np.split(members[:full], full // self.megabatch) if full else [])
        order = rng.permutation(len(megabatches))
        for k in order:
            yield from (int(i) for i in megabatches[k])
