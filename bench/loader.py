"""Loader throughput: navigation samples/s of ONE data-loader worker against its pixel bound.

A loader worker (one process, one thread) spends nearly all its CPU turning JPEG frames into
SigLIP pixels. The bound is the least work that any loader must do for the same samples:
decode, resize and float32-normalise exactly the frames those samples touch, with Pillow and
numpy and nothing else. The bench prints, per workload, CPU samples/s of

- `dataset`: `VLNActionDataset.__getitem__` as training runs it (`streamvln_model.data.media.images`);
- `bound`: the frames alone, decode + resize + normalise;
- `old`: the same samples through the transformers `SiglipImageProcessorPil` (the previous path);
- `augmented`: the same samples with the published data augmentation on every frame;

and the ratio of each to the bound (the bar: dataset >= 0.9 of the bound; exit code 1 below it).
Published configuration: 640x480 JPEG frames, SigLIP 384x384, num_frames 32, num_future_steps 4,
num_history 8 (arXiv 2507.05240; github.com/InternRobotics/StreamVLN). CPU time
(`time.process_time`) is summed per sample with the paths interleaved, so other work on a shared
machine and slow drifts affect every path alike.

    .venv/bin/python bench/loader.py [--episodes 12] [--workdir DIR]
"""

from __future__ import annotations

import os

# One worker, one thread: set before numpy and torch start their thread pools.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import SiglipImageProcessorPil, SiglipVisionConfig

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE
from streamvln_model.data.datasets.navigation import VLNActionDataset
from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.index.tables import build_index
from streamvln_model.data.media.images import preprocess_frames
from streamvln_model.model.conversation import prepare_tokenizer
from streamvln_model.model.tokenizer import load_tokenizer
from streamvln_model.model.vision import build_image_processor
from streamvln_model.synthetic import write_trajectories

FRAME_SIZE = (640, 480)  # (width, height) of the published R2R/RxR renders
IMAGE_SIZE = 384  # SigLIP-so400m-patch14-384
NUM_FRAMES, NUM_FUTURE_STEPS, NUM_HISTORY = (
    STREAMVLN_SHAPE.num_frames, STREAMVLN_SHAPE.num_future_steps, STREAMVLN_SHAPE.num_history
)  # fmt: skip
BAR = 0.9


@dataclass
class Workload:
    """One kind of training sample, as a loader worker sees it."""

    name: str
    dataset: Dataset  # __getitem__ is what the worker runs per sample
    frames: list[list[str]]  # per sample, the frame files its __getitem__ decodes, in order
    text: Callable[[int], object]  # the sample's non-pixel work, for the paths that swap the pixels


def navigation_workload(root: Path, episodes: int, processor: SiglipImageProcessorPil) -> Workload:
    """Synthetic 640x480 trajectories, indexed and loaded exactly as training does."""
    data = root / "navigation"
    if not (data / "annotations.json").exists():
        write_trajectories(
            data, episodes=episodes, min_steps=40, max_steps=100, image_size=FRAME_SIZE, seed=0
        )
    tokenizer = load_tokenizer()
    spec = prepare_tokenizer(tokenizer)
    index, _ = build_index(load_episodes(str(data)), NUM_FRAMES, NUM_HISTORY, NUM_FUTURE_STEPS)
    dataset = VLNActionDataset(index, tokenizer, spec, processor, STREAMVLN_SHAPE)
    plans = [dataset.plan(i) for i in range(len(dataset))]

    def text(i: int) -> object:
        plan = dataset.plan(i)
        return (torch.tensor(plan.input_ids), torch.tensor(plan.labels), torch.tensor(plan.current_steps))

    return Workload("navigation", dataset, [p.history_frames + p.current_frames for p in plans], text)


def workloads(root: Path, episodes: int, processor: SiglipImageProcessorPil) -> list[Workload]:
    """Every sample kind measured. Co-training samples (video QA, ScanQA, MMC4 interleaved
    image-text) join here as a `Workload` each once their datasets are wired into training."""
    return [navigation_workload(root, episodes, processor)]


def cotraining_rates(root: Path, processor: SiglipImageProcessorPil) -> dict[str, tuple[int, float]]:
    """Samples/s of one worker per co-training task, at the published stage-two frame budget
    (`frames_upbound` 32, `force_sample`, `add_time_instruction`) on 640x480 media: the data is
    a synthetic mixture checked and indexed as the data stage does, then loaded as training does.
    These samples decode video (PyAV) or many images, so they have no Pillow-only bound."""
    from types import SimpleNamespace

    from streamvln_model.data.datasets.training_set import training_dataset
    from streamvln_model.data.index.folder import checked_index, open_index
    from streamvln_model.data.validation.check import DataSettings
    from streamvln_model.data.validation.records import TASK_NAMES
    from streamvln_model.synthetic.mixture import training_flags, write_mixture

    data = root / "mixture"
    if (data / "mixture.yaml").exists():
        flags = training_flags(lambda relative: str(data / relative))
    else:
        flags = write_mixture(
            data, episodes=2, dagger_episodes=1, videos=4, video_frames=64, image_size=FRAME_SIZE
        ).flags
    fields = {**flags, "multi_task_training": True, "frames_upbound": 32, "force_sample": True}
    fields |= {"add_time_instruction": True, "num_frames": NUM_FRAMES, "num_history": NUM_HISTORY}
    fields |= {"num_future_steps": NUM_FUTURE_STEPS, "video_fps": 1, "data_augmentation": False}
    settings = DataSettings.of(fields, {"seed": 0})
    index = open_index(checked_index(settings, root / "cache", progress=False), settings)
    tokenizer = load_tokenizer()
    combined = training_dataset(
        index, tokenizer, prepare_tokenizer(tokenizer), processor, SimpleNamespace(**fields), seed=0
    )
    rates = {}
    for part in combined.datasets[1:]:
        part[0]  # warm-up
        start = time.process_time()
        for i in range(len(part)):
            part[i]
        rates[TASK_NAMES[part.task]] = (len(part), len(part) / (time.process_time() - start))
    return rates


def bound_pixels(processor: SiglipImageProcessorPil, paths: list[str]) -> np.ndarray:
    """The least work per sample: decode, resize, one float32 multiply-add; Pillow + numpy only."""
    side = int(processor.size["height"])
    std = np.asarray(processor.image_std, dtype=np.float64).reshape(3, 1, 1)
    scale = (processor.rescale_factor / std).astype(np.float32)
    offset = (-np.asarray(processor.image_mean, dtype=np.float64).reshape(3, 1, 1) / std).astype(np.float32)
    out = np.empty((len(paths), 3, side, side), dtype=np.float32)
    for k, path in enumerate(paths):
        small = Image.open(path).resize((side, side), resample=int(processor.resample))
        np.multiply(np.asarray(small).transpose(2, 0, 1), scale, out=out[k])
    out += offset
    return out


def old_pixels(processor: SiglipImageProcessorPil, paths: list[str]) -> torch.Tensor:
    """The previous path: RGB copies of the frames through the transformers processor."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return processor(images=images, return_tensors="pt")["pixel_values"]


def measure(workload: Workload, processor: SiglipImageProcessorPil) -> dict[str, float]:
    """CPU seconds per path over all samples, interleaved sample by sample."""
    paths = {
        "dataset": lambda i: workload.dataset[i],
        "bound": lambda i: bound_pixels(processor, workload.frames[i]),
        "old": lambda i: (workload.text(i), old_pixels(processor, workload.frames[i])),
        "augmented": lambda i: (
            workload.text(i),
            preprocess_frames(processor, workload.frames[i], augment=random.Random(f"0:{i}:augment")),
        ),
    }
    for run in paths.values():
        run(0)  # warm-up: lazy imports, first-touch allocations
    seconds = dict.fromkeys(paths, 0.0)
    for i in range(len(workload.dataset)):
        for name, run in paths.items():
            start = time.process_time()
            run(i)
            seconds[name] += time.process_time() - start
    return seconds


def report(workload: Workload, seconds: dict[str, float]) -> float:
    samples = len(workload.dataset)
    frames = sum(len(f) for f in workload.frames)
    rate = {name: samples / s for name, s in seconds.items()}
    print(f"\n{workload.name}: {samples} samples, {frames} frames ({frames / samples:.1f} per sample)")
    print(f"{'path':<10} {'samples/s':>10} {'ms/sample':>10} {'vs bound':>9}")
    for name, value in rate.items():
        print(f"{name:<10} {value:>10.2f} {1000 / value:>10.1f} {value / rate['bound']:>9.3f}")
    print(f"gain over the old path: {rate['dataset'] / rate['old']:.2f}x")
    return rate["dataset"] / rate["bound"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=12, help="synthetic episodes (3-4 samples each)")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the frames here; default a temp dir")
    args = parser.parse_args()
    torch.set_num_threads(1)
    processor = build_image_processor(SiglipVisionConfig(image_size=IMAGE_SIZE))
    print(
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; "
        f"frames {FRAME_SIZE[0]}x{FRAME_SIZE[1]} JPEG -> {IMAGE_SIZE}x{IMAGE_SIZE}; "
        f"F={NUM_FRAMES} K={NUM_FUTURE_STEPS} H={NUM_HISTORY}"
    )
    with tempfile.TemporaryDirectory() as temp:
        root = args.workdir or Path(temp)
        ratios = [report(w, measure(w, processor)) for w in workloads(root, args.episodes, processor)]
        cotraining = cotraining_rates(root, processor)
    print(f"\nco-training samples (frames_upbound 32, {FRAME_SIZE[0]}x{FRAME_SIZE[1]} media):")
    for task, (count, rate) in cotraining.items():
        print(f"{task:<10} {count:>4} samples {rate:>8.2f} samples/s {1000 / rate:>8.1f} ms/sample")
    worst = min(ratios)
    print(f"\nbar: dataset >= {BAR} of the bound -> {'met' if worst >= BAR else 'MISSED'} ({worst:.3f})")
    return 0 if worst >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
