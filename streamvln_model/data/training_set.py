"""The training dataset of a run: navigation samples, plus each co-training task when indexed."""

from __future__ import annotations

from torch.utils.data import Dataset

from .catalog import DataSettings
from .combined import CombinedDataset
from .cotraining import FORMATS
from .store import TrainingIndex
from .vln_dataset import VLNActionDataset


def training_dataset(
    index: TrainingIndex, tokenizer, token_spec, image_processor, data_args, seed: int
) -> Dataset:
    """Navigation alone, or every task concatenated with each sample's task id kept."""
    navigation = VLNActionDataset(
        index.navigation,
        tokenizer,
        token_spec,
        image_processor,
        num_frames=data_args.num_frames,
        num_history=data_args.num_history,
        num_future_steps=data_args.num_future_steps,
        seed=seed,
        data_augmentation=bool(data_args.data_augmentation),
    )
    if not index.cotraining:
        return navigation
    settings = FORMATS_SETTINGS(data_args)
    parts: list[Dataset] = [navigation]
    for task, table in sorted(index.cotraining.items()):
        parts.append(
            FORMATS[task].DATASET(table, index.roots, tokenizer, token_spec, image_processor, settings, seed)
        )
    return CombinedDataset(parts)
