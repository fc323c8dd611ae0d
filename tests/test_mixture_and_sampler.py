"""The co-training YAML, the sampling strategies, the combined dataset and the task sampler.

Expected subsets are written out by hand from the published rules (StreamVLN
`LazySupervisedDataset`: `P%` -> ceil(P * len / 100), `random:N` -> first N of a shuffled copy,
`sampling_subset` applied after the strategy). The distributed check drives accelerate's own
`prepare_data_loader` (what `Trainer._get_dataloader` calls through `Accelerator.prepare`) for
two ranks.
"""

from __future__ import annotations

import random

import pytest
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader, Dataset

from streamvln_model.data.datasets.combined import CombinedDataset, GroupByTaskSampler, megabatch_size
from streamvln_model.data.formats.mixture import MixtureEntry, read_mixture, select

YAML = """
QA_datasets:
  - json_path: /data/qa/academic.json
    sampling_strategy: random:20%
    sampling_subset: Academic, youtube
  - json_path: /data/qa/youtube.json
SCANQA_datasets:
  - json_path: /data/scanqa/train.json
    sampling_strategy: first:100
MMC4_datasets:
  - json_path: /data/mmc4/shards
    sampling_strategy: end:2
"""


def test_published_groups_read_with_tasks_and_defaults():
    entries, problems = read_mixture(YAML, "mix.yaml")
    assert problems == []
    assert entries == [
        MixtureEntry("QA_datasets", 1, "/data/qa/academic.json", "random:20%", ["academic", "youtube"]),
        MixtureEntry("QA_datasets", 1, "/data/qa/youtube.json", "all", None),
        MixtureEntry("SCANQA_datasets", 2, "/data/scanqa/train.json", "first:100", None),
        MixtureEntry("MMC4_datasets", 3, "/data/mmc4/shards", "end:2", None),
    ]


ENTRY = "QA_datasets:\n  - json_path: a.json\n    "
FIRST = "QA_datasets[0]"


@pytest.mark.parametrize(
    ("yaml_text", "field", "words"),
    [
        ("VQA_datasets:\n  - json_path: a.json\n", "VQA_datasets", "one of QA_datasets"),
        ("datasets:\n  - json_path: a.json\n", "datasets", "rename"),
        ("QA_datasets:\n  - sampling_strategy: all\n", f"{FIRST}.json_path", "missing"),
        (ENTRY + "sampling_strategy: random:abc\n", f"{FIRST}.sampling_strategy", "random:N"),
        (ENTRY + "sampling_strategy: end:0\n", f"{FIRST}.sampling_strategy", "1 or more"),
        (ENTRY + "sampling_strategy: first\n", f"{FIRST}.sampling_strategy", "first:N"),
        (ENTRY + "sampling_strategy: first:150%\n", f"{FIRST}.sampling_strategy", "1..100"),
        (ENTRY + "sampling_strategy: random:12.5%\n", f"{FIRST}.sampling_strategy", "random:N"),
        (ENTRY + "sampling_subset: ' , '\n", f"{FIRST}.sampling_subset", "no keyword"),
        (ENTRY + "sampling_stratgy: all\n", f"{FIRST}.sampling_stratgy", "not a known key"),
        ("QA_datasets: [\n", "", "not YAML"),
    ],
)
def test_each_bad_setting_is_a_problem_naming_file_and_field(yaml_text, field, words):
    entries, problems = read_mixture(yaml_text, "mix.yaml")
    assert entries == []
    assert len(problems) == 1
    assert (problems[0].file, problems[0].field) == ("mix.yaml", field)
    assert words in problems[0].reason


ITEMS = [{"video": f"{'youtube' if i % 3 == 0 else 'academic'}/clip{i}.mp4", "n": i} for i in range(10)]


def numbers(items):
    return [item["n"] for item in items]


def test_first_end_and_percent_select_the_documented_entries():
    assert numbers(select(ITEMS, "all", seed=0)) == list(range(10))
    assert numbers(select(ITEMS, "first:3", seed=0)) == [0, 1, 2]
    assert numbers(select(ITEMS, "end:3", seed=0)) == [7, 8, 9]
    assert numbers(select(ITEMS, "first:25%", seed=0)) == [0, 1, 2]  # ceil(2.5) = 3
    assert numbers(select(ITEMS, "end:11%", seed=0)) == [8, 9]  # ceil(1.1) = 2
    assert numbers(select(ITEMS, "first:40", seed=0)) == list(range(10))


def test_random_takes_the_first_n_of_a_seeded_shuffle():
    shuffled = list(range(10))
    random.Random(7).shuffle(shuffled)
    assert numbers(select(ITEMS, "random:4", seed=7)) == shuffled[:4]
    assert numbers(select(ITEMS, "random:50%", seed=7)) == shuffled[:5]
    assert select(ITEMS, "random:4", seed=7) == select(ITEMS, "random:4", seed=7)
    assert {tuple(numbers(select(ITEMS, "random:4", seed=s))) for s in range(5)} != {tuple(shuffled[:4])}
    assert numbers(ITEMS) == list(range(10))  # the caller's list is not shuffled in place


def test_subset_keywords_filter_after_the_strategy():
    # first:5 keeps 0..4; of those, youtube clips are 0 and 3 (not the first five youtube clips)
    assert numbers(select(ITEMS, "first:5", seed=0, subset=["youtube"])) == [0, 3]
    assert numbers(select(ITEMS, "all", seed=0, subset=["YouTube", "nothing"])) == [0, 3, 6, 9]
    assert numbers(select(ITEMS, "all", seed=0, subset=["clip1"], key=lambda item: item["video"])) == [1]


class Constant(Dataset):
    """A dataset whose samples name where they came from."""

    def __init__(self, name: str, size: int, task: int | None):
        self.name, self.size = name, size
        if task is not None:
            self.task = task

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(i)
        return (self.name, i)


def test_combined_dataset_routes_indices_and_keeps_task_ids():
    combined = CombinedDataset([Constant("nav", 3, None), Constant("qa", 2, 1), Constant("mmc4", 4, 3)])
    assert len(combined) == 9
    assert [combined[i] for i in (0, 2, 3, 4, 5, 8)] == [
        ("nav", 0), ("nav", 2), ("qa", 0), ("qa", 1), ("mmc4", 0), ("mmc4", 3)
    ]  # fmt: skip
    assert combined.tasks.tolist() == [0, 0, 0, 1, 1, 3, 3, 3, 3]
    with pytest.raises(IndexError):
        combined[9]


TASKS = [0] * 37 + [1] * 20 + [2] * 9 + [3] * 5  # megabatch 8 drops 5, 4, 1 and all 5


def test_sampler_yields_single_task_megabatches_each_sample_once():
    sampler = GroupByTaskSampler(TASKS, megabatch=megabatch_size(2, 2, 2), seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 32 + 16 + 8
    assert sampler.dropped == {0: 5, 1: 4, 2: 1, 3: 5}
    assert len(set(order)) == len(order)
    for start in range(0, len(order), 8):
        assert len({TASKS[i] for i in order[start : start + 8]}) == 1
    per_task = {t: sum(TASKS[i] == t for i in order) for t in range(4)}
    assert per_task == {0: 32, 1: 16, 2: 8, 3: 0}
    assert [TASKS[i] for i in order[::8]] != sorted(TASKS[i] for i in order[::8])  # megabatches shuffled


def test_sampler_is_deterministic_per_seed_and_epoch():
    a, b = GroupByTaskSampler(TASKS, 8, seed=3), GroupByTaskSampler(TASKS, 8, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(GroupByTaskSampler(TASKS, 8, seed=4)) != first
    assert GroupByTaskSampler([(t, 1) for t in TASKS], 8, seed=3).tasks.tolist() == TASKS


class Index(Dataset):
    def __len__(self):
        return len(TASKS)

    def __getitem__(self, i):
        return i


def rank_batches(sampler: GroupByTaskSampler, world: int, batch: int, epoch: int) -> list[list[list[int]]]:
    """Per rank, the batches accelerate hands it (the Trainer's DataLoader, prepared for `world` ranks)."""
    batches = []
    for rank in range(world):
        loader = DataLoader(Index(), batch_size=batch, sampler=sampler, collate_fn=list)
        shard = prepare_data_loader(loader, num_processes=world, process_index=rank, put_on_device=False)
        shard.set_epoch(epoch)  # what the Trainer calls before each epoch
        batches.append([list(b) for b in shard])
    return batches


def test_every_optimizer_step_on_every_rank_is_single_task_under_accelerate():
    batch, world, accum = 2, 2, 2
    sampler = GroupByTaskSampler(TASKS, megabatch_size(batch, world, accum), seed=0)
    epochs = []
    for epoch in (0, 1):
        ranks = rank_batches(sampler, world, batch, epoch)
        assert len(ranks[0]) == len(ranks[1]) == len(sampler) // (batch * world)
        steps = len(ranks[0]) // accum
        for step in range(steps):
            step_indices = [i for r in ranks for b in r[step * accum : (step + 1) * accum] for i in b]
            assert len(step_indices) == batch * world * accum
            assert len({TASKS[i] for i in step_indices}) == 1, f"epoch {epoch} step {step} mixes tasks"
        seen = sorted(i for r in ranks for b in r for i in b)
        assert len(seen) == len(set(seen)) == len(sampler)  # no rank repeats or pads with another's samples
        epochs.append(ranks)
    assert epochs[0] != epochs[1]


def test_sampler_refuses_an_empty_megabatch():
    with pytest.raises(ValueError, match="megabatch"):
        GroupByTaskSampler(TASKS, megabatch=0)
    assert len(GroupByTaskSampler([1, 1, 1], megabatch=4)) == 0
    assert sorted(GroupByTaskSampler([1, 1, 1, 1], megabatch=4)) == [0, 1, 2, 3]
