"""The training dataset of a run: navigation samples, plus each co-training task when indexed."""

from __future__ import annotations

from torch.utils.data import Dataset

from streamvln_model.config.sample_shape import SampleShape
from streamvln_model.data.datasets.combined import CombinedDataset, CoTrainingDataset, CoTrainingSettings
from streamvln_model.data.datasets.navigation import VLNActionDataset
from streamvln_model.data.formats.mmc4 import MMC4Dataset
from streamvln_model.data.formats.scanqa import ScanQADataset
from streamvln_model.data.formats.video_qa import VideoQADataset
from streamvln_model.data.index.folder import TrainingIndex
from streamvln_model.data.index.tables import NavigationIndex
from streamvln_model.data.validation.records import MMC4, QA, SCANQA

DATASETS: dict[int, type[CoTrainingDataset]] = {QA: VideoQADataset, SCANQA: ScanQADataset, MMC4: MMC4Dataset}


def training_dataset(
    index: TrainingIndex | NavigationIndex, tokenizer, token_spec, image_processor, data_args, seed: int
) -> Dataset:
    """Navigation alone, or every task concatenated with each sample's task id kept."""
    if isinstance(index, NavigationIndex):  # built in memory (tests, benchmarks): navigation only
        index = TrainingIndex(index, roots=index.roots)
    navigation = VLNActionDataset(
        index.navigation,
        tokenizer,
        token_spec,
        image_processor,
        shape=SampleShape(data_args.num_frames, data_args.num_history, data_args.num_future_steps),
        seed=seed,
        data_augmentation=bool(data_args.data_augmentation),
    )
    if not index.cotraining:
        return navigation
    settings = CoTrainingSettings.from_arguments(data_args)
    parts: list[Dataset] = [navigation]
    for task, table in sorted(index.cotraining.items()):
        parts.append(
            DATASETS[task](table, index.roots, tokenizer, token_spec, image_processor, settings, seed)
        )
    return CombinedDataset(parts)
