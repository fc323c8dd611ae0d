"""`VLNActionDataset`: navigation samples (task 0) read from the memory-mapped sample index."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase, SiglipImageProcessorPil

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE, SampleShape
from streamvln_model.data import locations as storage
from streamvln_model.data.datasets.sampling import action_groups, current_steps, history_steps
from streamvln_model.data.formats.annotations import frame_folder
from streamvln_model.data.formats.prompts import navigation_conversation
from streamvln_model.data.index.tables import NavigationIndex
from streamvln_model.data.media.images import preprocess_frames
from streamvln_model.data.validation.records import NAVIGATION
from streamvln_model.model.conversation import TokenSpec, tokenize_conversation

NAVIGATION_TASK = NAVIGATION


@dataclass
class SamplePlan:
    """Everything about a sample except pixels: what `data preview` shows and training loads."""

    episode_id: str
    instruction: str
    start: int
    history_frames: list[str]
    current_frames: list[str]
    current_steps: list[int]
    conversation: list[dict[str, str]]
    input_ids: list[int]
    labels: list[int]


class VLNActionDataset(Dataset):
    def __init__(
        self,
        index: NavigationIndex,
        tokenizer: PreTrainedTokenizerBase,
        token_spec: TokenSpec,
        image_processor: SiglipImageProcessorPil,
        shape: SampleShape = STREAMVLN_SHAPE,
        seed: int = 0,
        data_augmentation: bool = False,
    ):
        self.index = index
        self.tokenizer = tokenizer
        self.token_spec = token_spec
        self.image_processor = image_processor
        self.shape = shape
        self.seed = seed
        self.data_augmentation = data_augmentation

    def __len__(self) -> int:
        return len(self.index)

    def plan(self, i: int) -> SamplePlan:
        row = self.index.row(i)
        actions, frames, start = row["actions"], row["frames"], row["start"]
        frame_dir = frame_folder(self.index.roots[row["root"]], row["video"])
        shape = self.shape
        history = history_steps(start, shape.num_history)
        current = current_steps(start, len(actions), shape.num_frames, shape.num_future_steps)
        groups = action_groups(actions, start, shape.num_frames, shape.num_future_steps)
        # Seeded per sample: the preview shows exactly what training sees, and runs reproduce.
        rng = random.Random(f"{self.seed}:{i}")
        conversation = navigation_conversation(row["instruction"], groups, bool(history), rng)
        input_ids, labels = tokenize_conversation(self.tokenizer, self.token_spec, conversation)
        return SamplePlan(
            episode_id=row["episode_id"],
            instruction=row["instruction"],
            start=start,
            history_frames=[storage.join(frame_dir, frames[t]) for t in history],
            current_frames=[storage.join(frame_dir, frames[t]) for t in current],
            current_steps=current,
            conversation=conversation,
            input_ids=input_ids,
            labels=labels,
        )

    def __getitem__(self, i: int) -> dict:
        plan = self.plan(i)
        paths = [storage.local_path(p) for p in plan.history_frames + plan.current_frames]
        augment = random.Random(f"{self.seed}:{i}:augment") if self.data_augmentation else None
        return {
            "input_ids": torch.tensor(plan.input_ids, dtype=torch.long),
            "labels": torch.tensor(plan.labels, dtype=torch.long),
            "images": preprocess_frames(self.image_processor, paths, augment=augment),
            "time_ids": torch.tensor(plan.current_steps, dtype=torch.long),
            "task_type": NAVIGATION_TASK,
        }
