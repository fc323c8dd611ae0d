"""The data index at ScaleVLN size: index build time, decode-check rate, per-worker memory.

One run generates a navigation source in the published layout (`annotations.json` + frame
folders, github.com/InternRobotics/StreamVLN, arXiv 2507.05240) and measures, each phase in a
fresh subprocess so that its peak RSS is its own:

- `build`: `check_data(decode=False)` + `write_index` (bar: under 60 s). Every annotation is
  checked and every frame is listed and stat'ed; no image is decoded.
- `decode`: `check_media` on freshly written 640x480 JPEG frames with 1 and 2 workers, files/s,
  and the time that rate gives for every frame of the source.
- `workers-*`: a parent opens the data as training does, then forks K loader-like workers (as
  torch's DataLoader forks them) that each run `VLNActionDataset.plan` (no pixels) on random
  samples, then an epoch of row access and a full `gc.collect()`. Per worker: RSS, USS
  (private pages, what exiting the worker frees) and private dirty pages (the copies it made of
  the parent's memory, anonymous and never reclaimable: the bar's figure). USS also counts the
  clean, file-backed pages of the memory-mapped index that only this worker has touched so far:
  page cache, one copy per machine, shared as soon as a second process reads them, reclaimable.
  Figures are also given net of the `baseline` worker (what any forked worker copies of the
  parent's imported modules once its garbage collector runs). `ours` opens the memory-mapped
  Arrow index; `published` holds the episodes the way the published `VLNActionDataset.__init__`
  (`streamvln/dataset/vln_action_dataset.py`) does: the json-loaded list of episode dicts, each
  `video` joined with its source folder, plus one `(episode, instruction, start, offset)` tuple
  per sample; `baseline` holds no data (imports and tokenizer only). Bar: ours < 1/5 of published.

Frames of the build source are hard links to one 64x48 JPEG per folder (the build never decodes
them); episodes share a pool of `--folders` frame folders, one per (episode length, k), because
the check requires exactly one frame per entry of `actions`.

    .venv/bin/python bench/data_scale.py [--episodes 150000] [--folders 2000] [--workdir DIR] [--out FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import cProfile
import gc
import io
import json
import math
import multiprocessing
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# StreamVLN's sample shape (streamvln_model/config/sample_shape.py), read where streamvln_model is
# imported anyway: importing it here would load torch into every phase, `--help` included.
MIN_STEPS, MAX_STEPS, MEAN_STEPS, SD_STEPS = 30, 150, 80, 28  # R2R / ScaleVLN-like episode lengths
BUILD_BAR_S = 60.0
MEMORY_BAR = 5.0  # ours must need less than 1/MEMORY_BAR of the published way, per worker
PHOTO_SIZE = (640, 480)  # (width, height) of the released R2R/RxR frames
TINY_SIZE = (64, 48)
RESULT = "RESULT "
MIB = 1024 * 1024


# --- generating the source ---------------------------------------------------------------------
def episode_lengths(rng: np.random.Generator, episodes: int) -> np.ndarray:
    """len(actions) per episode: R2R/ScaleVLN-like, ~80 steps on average, 30..150."""
    lengths = np.rint(rng.normal(MEAN_STEPS, SD_STEPS, episodes))
    return np.clip(lengths, MIN_STEPS, MAX_STEPS).astype(np.int64)


def folders_per_length(lengths: np.ndarray, folders: int) -> dict[int, int]:
    """How many pool folders each episode length gets: in proportion to its episodes, at least one."""
    distinct, counts = np.unique(lengths, return_counts=True)
    if folders < len(distinct):
        raise SystemExit(f"--folders {folders}: need at least {len(distinct)} (one per episode length)")
    share = np.maximum(1, np.floor(counts / counts.sum() * folders)).astype(np.int64)
    order = np.argsort(-counts)
    k = 0
    while share.sum() != folders:
        j = order[k % len(order)]
        step = 1 if share.sum() < folders else -1
        if share[j] + step >= 1:
            share[j] += step
        k += 1
    return dict(zip(distinct.tolist(), share.tolist(), strict=True))


def scene_names(count: int, rng: random.Random) -> list[str]:
    """Matterport-like 11-character scene ids."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return ["".join(rng.choice(alphabet) for _ in range(11)) for _ in range(count)]


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def generate_source(source: Path, episodes: int, folders: int, seed: int = 0) -> dict[str, Any]:
    """The published layout, by streamvln_model.synthetic.trajectories' helpers: annotations.json +
    images/<scene>_synth_NNNNNN/rgb/NNN.jpg, episodes sharing a pool of frame folders (one pool per
    episode length), each folder one tiny rendered JPEG hard-linked per step."""
    from streamvln_model.config.sample_shape import STREAMVLN_SHAPE
    from streamvln_model.files import write_json_atomically
    from streamvln_model.synthetic.trajectories import (
        ANNOTATIONS_FILE,
        annotation,
        frame_name,
        instruction,
        render_frame,
        video_name,
        write_linked_frames,
    )

    rng = np.random.default_rng(seed)
    text_rng = random.Random(seed)
    lengths = episode_lengths(rng, episodes)
    pool = folders_per_length(lengths, folders)
    scenes = scene_names(90, text_rng)
    names: dict[int, list[str]] = {}
    for length, n in pool.items():
        first = sum(len(videos) for videos in names.values())
        names[length] = [
            f"images/{video_name(first + k, scenes[(length * 7 + k) % len(scenes)])}" for k in range(n)
        ]
    frame = render_frame([None] * STREAMVLN_SHAPE.num_future_steps, TINY_SIZE, rng)
    for length, videos in names.items():
        for video in videos:
            write_linked_frames(source / video / "rgb", frame, length)
    moves = rng.choice(np.array([1, 2, 3], dtype=np.int64), size=int(lengths.sum()), p=[0.7, 0.15, 0.15])
    ends = np.cumsum(lengths - 1)
    annotations = [
        annotation(
            i,
            names[length][int(rng.integers(len(names[length])))],
            [instruction(rng, min_chars=150)[:300] for _ in range(text_rng.randint(2, 3))],
            moves[ends[i] - (length - 1) : ends[i]].tolist(),
        )
        for i, length in enumerate(lengths.tolist())
    ]
    write_json_atomically(source / ANNOTATIONS_FILE, annotations)
    first_frame = source / names[int(lengths[0])][0] / "rgb" / frame_name(0, int(lengths[0]))
    return {
        "episodes": episodes,
        "folders": folders,
        "pool_frames": int(sum(length * n for length, n in pool.items())),
        "episode_frames": int(lengths.sum()),
        "mean_steps": float(lengths.mean()),
        "annotations_mib": (source / ANNOTATIONS_FILE).stat().st_size / MIB,
        "frame_bytes": first_frame.stat().st_size,
    }


def photos(folder: Path, count: int, seed: int = 0) -> list[str]:
    """640x480 JPEGs (q90) with photo-like cost: smooth gradients, shapes, sensor-like noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    height, width = PHOTO_SIZE[1], PHOTO_SIZE[0]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    paths = []
    for i in range(count):
        colour = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        ramp = (x / width * np.cos(i) + y / height * np.sin(i))[..., None] % 1.0
        image = colour[0] * (1 - ramp) + colour[1] * ramp + np.roll(noise, i * 37, axis=1)
        for _ in range(4):
            top, left = int(rng.integers(0, height - 60)), int(rng.integers(0, width - 80))
            image[top : top + int(rng.integers(20, 160)), left : left + int(rng.integers(20, 200))] *= 0.6
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(jpeg_bytes(image.clip(0, 255).astype(np.uint8)))
        paths.append(str(path))
    return paths


# --- memory --------------------------------------------------------------------------------------
def memory() -> dict[str, float]:
    """This process's memory in MiB from /proc/self/smaps_rollup.

    rss: resident pages, shared ones included. uss: private pages (Private_Clean + Private_Dirty),
    what ending this process frees. private_dirty: pages this process wrote that no other process
    maps, for a forked worker its copy-on-write copies of the parent's memory (never reclaimable
    without swap); the file-backed pages of a memory map are clean and reclaimable.
    """
    fields: dict[str, float] = {}
    with open("/proc/self/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
        "private_dirty": fields["Private_Dirty"],
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


# --- the published way -----------------------------------------------------------------------
class PublishedIndex:
    """The navigation data held the published way, behind `NavigationIndex.row`'s interface.

    As the published `VLNActionDataset.__init__` builds it: each `annotations.json` is
    json-loaded, every episode's `video` joined with its source folder, the episode dicts
    concatenated, and one `(episode, instruction, start, offset)` tuple appended per sample.
    Its `__getitem__` lists the frame folder per sample (`sorted(os.listdir(...))`), as `row` does.
    """

    def __init__(self, video_folders: list[str], num_frames: int):
        self.roots = ["/"]  # `video` entries are absolute after the join
        self.nav_data: list[dict] = []
        for folder in video_folders:
            with open(os.path.join(folder, "annotations.json")) as handle:
                episodes = json.load(handle)
            for episode in episodes:
                episode["video"] = os.path.join(folder, episode["video"])
            self.nav_data += episodes
        self.data_list: list[tuple[int, int, int, int]] = []
        for e, episode in enumerate(self.nav_data):
            length = len(episode["actions"])
            if length < 4:
                continue
            instructions = episode["instructions"]
            count = len(instructions) if isinstance(instructions, list) else 1
            for k in range(count):
                for n in range(length // num_frames + 1):
                    if n * num_frames != length:
                        self.data_list.append((e, k, n * num_frames, 0))

    def __len__(self) -> int:
        return len(self.data_list)

    def access(self, i: int) -> tuple[str, str, list[int], int, int]:
        """What the published `__getitem__` reads of sample `i` (references it takes included)."""
        episode_index, instruction_index, start, offset = self.data_list[i]
        episode = self.nav_data[episode_index]
        instructions = episode["instructions"]
        if not isinstance(instructions, list):
            instructions = [instructions]
        actions = [*episode["actions"][1 + offset :], 0]
        return episode["video"], instructions[instruction_index], actions, start, offset

    def row(self, i: int) -> dict:
        video, text, _, start, offset = self.access(i)
        episode = self.nav_data[self.data_list[i][0]]
        return {
            "root": 0,
            "video": video,
            "episode_id": str(episode["id"]),
            "instruction_index": self.data_list[i][1],
            "instruction": text,
            "actions": list(episode["actions"]),
            "frames": sorted(os.listdir(os.path.join(video, "rgb"))),
            "start": start,
            "offset": offset,
        }


# --- phases (each runs in its own subprocess) --------------------------------------------------
def settings_for(source: Path):
    from streamvln_model.data.validation.check import DataSettings

    return DataSettings(video_folder=str(source))  # StreamVLN's sample shape


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MIB


def phase_generate(args: argparse.Namespace) -> dict[str, Any]:
    """The source, reused when the work folder already holds one of the same size."""
    meta_file = args.workdir / "source.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta["episodes"] == args.episodes and meta["folders"] == args.folders:
            return {**meta, "generate_s": 0.0, "reused": True}
    source = args.workdir / "source"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    started = time.perf_counter()
    meta = generate_source(source, args.episodes, args.folders)
    meta_file.write_text(json.dumps(meta))
    return {**meta, "generate_s": time.perf_counter() - started, "reused": False}


def build_once(args: argparse.Namespace, parent: Path) -> dict[str, Any]:
    from streamvln_model.data.index.folder import index_folder, write_index
    from streamvln_model.data.validation.check import check_data

    shutil.rmtree(parent, ignore_errors=True)
    started = time.perf_counter()
    check = check_data(settings_for(args.workdir / "source"), decode=False, progress=False)
    checked = time.perf_counter()
    location, _ = write_index(check, index_folder(parent, check.key))
    path = Path(location)
    written = time.perf_counter()
    manifest = json.loads((path / "manifest.json").read_text())
    return {
        "check_s": checked - started,
        "write_s": written - checked,
        "build_s": written - started,
        "folders": len(check.navigation.folders),
        "frames": sum(len(f["frames"]) for f in check.navigation.folders),
        "episodes": len(check.navigation.episodes),
        "samples": manifest["samples"]["navigation"],
        "index": str(path),
        "index_mib": folder_mib(path),
    }


def phase_build(args: argparse.Namespace) -> dict[str, Any]:
    result = build_once(args, args.workdir / "data-index")
    return {**result, "peak_rss_mib": peak_rss_mib()}


def phase_profile(args: argparse.Namespace) -> dict[str, Any]:
    """The build under cProfile (slower than unprofiled): where its time goes."""
    profiler = cProfile.Profile()
    profiler.enable()
    build_once(args, args.workdir / "data-index-profile")
    profiler.disable()
    shutil.rmtree(args.workdir / "data-index-profile", ignore_errors=True)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    return {"profile": text.getvalue()}


def phase_decode(args: argparse.Namespace) -> dict[str, Any]:
    from streamvln_model.data.validation.media_checks import check_media

    folder = args.workdir / "photos"
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    if len(paths) != args.decode_files:
        shutil.rmtree(folder, ignore_errors=True)
        paths = photos(folder, args.decode_files)
    items = [(path, "image") for path in paths]
    rates = {}
    for workers in (1, 2):
        started = time.perf_counter()
        results = check_media(items, cache_path=None, workers=workers, progress=False)
        elapsed = time.perf_counter() - started
        bad = [r for r in results if r.problem]
        if bad:
            raise SystemExit(f"{bad[0].location}: {bad[0].problem}")
        rates[workers] = len(items) / elapsed
    mean_kib = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
    return {"files": len(paths), "mean_kib": mean_kib, "rate_w1": rates[1], "rate_w2": rates[2]}


def permutation(n: int, seed: int) -> Iterator[int]:
    """Every index below n once, in a scattered order, without a list of n ints in the worker.

    A shuffled `list(range(n))` would itself take ~40 MiB of private memory per worker at 1.1M
    samples (ints above 256 are heap objects) and be counted against both ways; a torch sampler
    keeps its permutation in the main process, not in the workers. A stride coprime with n,
    near n/golden ratio, scatters consecutive reads across the tables.
    """
    if n < 2:
        yield from range(n)
        return
    step = max(1, int(n / 1.618033988749895))
    while math.gcd(step, n) != 1:
        step += 1
    offset = random.Random(seed).randrange(n)
    for k in range(n):
        yield (offset + k * step) % n


def _worker(connection, index, tokenizer, spec, worker: int, plans: int, epoch: str) -> None:
    """A forked loader worker: plans, then an epoch of row access, then a full collection."""
    from streamvln_model.config.sample_shape import STREAMVLN_SHAPE
    from streamvln_model.data.datasets.navigation import VLNActionDataset

    figures: dict[str, Any] = {"start": memory()}
    if index is not None:
        dataset = VLNActionDataset(index, tokenizer, spec, None, STREAMVLN_SHAPE)
        rng = random.Random(worker)
        chosen = [rng.randrange(len(index)) for _ in range(plans)]
        started = time.perf_counter()
        for i in chosen:
            dataset.plan(i)
        figures["plan_ms"] = (time.perf_counter() - started) / plans * 1000
        figures["plans"] = memory()
        access = index.access if epoch == "access" else index.row
        started = time.perf_counter()
        for i in permutation(len(index), worker):
            access(i)
        figures["epoch_s"] = time.perf_counter() - started
        figures["epoch"] = memory()
    gc.collect()
    figures["collected"] = memory()
    connection.send(figures)
    connection.close()


def phase_workers(args: argparse.Namespace) -> dict[str, Any]:
    """Open the data as training does, fork K workers, gather their memory figures."""
    from streamvln_model.config.sample_shape import STREAMVLN_SHAPE
    from streamvln_model.data.datasets.navigation import VLNActionDataset  # noqa: F401  (imported before fork)
    from streamvln_model.data.index.folder import open_index
    from streamvln_model.model.conversation import prepare_tokenizer
    from streamvln_model.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    spec = prepare_tokenizer(tokenizer)
    gc.collect()
    before = memory()
    started = time.perf_counter()
    source = args.workdir / "source"
    if args.way == "ours":
        index = open_index(args.index, settings_for(source)).navigation
    elif args.way == "published":
        index = PublishedIndex([str(source)], STREAMVLN_SHAPE.num_frames)
    else:
        index = None
    load_s = time.perf_counter() - started
    gc.collect()
    after = memory()
    context = multiprocessing.get_context("fork")
    pipes, processes = [], []
    epoch = "access" if args.way == "published" else "row"
    for worker in range(args.workers):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker, args=(send, index, tokenizer, spec, worker, args.plans, epoch)
        )
        process.start()
        send.close()
        pipes.append(receive)
        processes.append(process)
    workers = [pipe.recv() for pipe in pipes]
    for process in processes:
        process.join()
    return {
        "load_s": load_s,
        "samples": len(index) if index is not None else 0,
        "parent_before": before,
        "parent_after": after,
        "parent_peak_rss_mib": peak_rss_mib(),
        "workers": workers,
    }


PHASES = {
    "generate": phase_generate,
    "build": phase_build,
    "profile": phase_profile,
    "decode": phase_decode,
    "workers": phase_workers,
}


# --- the run -----------------------------------------------------------------------------------
def run_phase(args: argparse.Namespace, phase: str, *extra: str) -> dict[str, Any]:
    """One phase in a fresh interpreter; its result is the JSON on its last RESULT line."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--phase",
        phase,
        "--workdir",
        str(args.workdir),
        "--episodes",
        str(args.episodes),
        "--folders",
        str(args.folders),
        "--decode-files",
        str(args.decode_files),
        "--workers",
        str(args.workers),
        "--plans",
        str(args.plans),
        *extra,
    ]
    print(f"[data_scale] {phase} {' '.join(extra)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"phase {phase} failed with exit code {done.returncode}")
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith(RESULT))
    return json.loads(line[len(RESULT) :])


def mean_worker(workers: list[dict], state: str, figure: str) -> float:
    return sum(w[state][figure] for w in workers) / len(workers)


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, ours, published, ratio, bar) rows of the summary table."""
    source, build, decode = results["source"], results["build"], results["decode"]
    ours, published, base = (results["workers"][w] for w in ("ours", "published", "baseline"))
    table = [
        (
            "episodes / pool folders / frames",
            f"{build['episodes']:,} / {build['folders']:,} / {build['frames']:,}",
            "",
            "",
            "",
        ),
        (
            "samples (episode, instruction, chunk start)",
            f"{build['samples']:,}",
            f"{published['samples']:,}",
            "",
            "",
        ),
        ("annotations.json", f"{source['annotations_mib']:.0f} MiB", "", "", ""),
        (
            "index build: check_data(decode=False) + write_index",
            f"{build['build_s']:.1f} s",
            "",
            "",
            f"< {BUILD_BAR_S:.0f} s: {'holds' if build['build_s'] < BUILD_BAR_S else 'FAILS'}",
        ),
        (
            "  of which check_data / write_index",
            f"{build['check_s']:.1f} s / {build['write_s']:.1f} s",
            "",
            "",
            "",
        ),
        ("index build peak RSS", f"{build['peak_rss_mib']:,.0f} MiB", "", "", ""),
        ("index on disk", f"{build['index_mib']:.0f} MiB", "", "", ""),
        (
            f"decode check, 640x480 q90 JPEG ({decode['mean_kib']:.0f} KiB), 1 / 2 workers",
            f"{decode['rate_w1']:.0f} / {decode['rate_w2']:.0f} files/s",
            "",
            "",
            "",
        ),
        (
            f"decode check of the pool's {source['pool_frames']:,} frames, 2 workers",
            f"{source['pool_frames'] / decode['rate_w2'] / 60:.1f} min",
            "",
            "",
            "",
        ),
        (
            f"decode check of {source['episode_frames']:,} frames (one folder per episode), 2 workers",
            f"{source['episode_frames'] / decode['rate_w2'] / 3600:.1f} h",
            "",
            "",
            "",
        ),
        (
            "open in the parent (open_index vs json.load + sample list)",
            f"{ours['load_s']:.2f} s",
            f"{published['load_s']:.2f} s",
            "",
            "",
        ),
        (
            "parent RSS growth from holding the data",
            f"{ours['parent_after']['rss'] - ours['parent_before']['rss']:,.0f} MiB",
            f"{published['parent_after']['rss'] - published['parent_before']['rss']:,.0f} MiB",
            "",
            "",
        ),
        (
            "plan() per sample (no pixels)",
            f"{mean_worker_plain(ours, 'plan_ms'):.2f} ms",
            f"{mean_worker_plain(published, 'plan_ms'):.2f} ms",
            "",
            "",
        ),
    ]
    states = (
        ("plans", "start", f"after {results['plans']:,} random plans"),
        ("epoch", "start", "after an epoch of row access"),
        ("collected", "collected", "after the epoch + gc.collect() (steady state)"),
    )
    for state, base_state, label in states:
        for figure in ("uss", "private_dirty", "rss"):
            baseline = mean_worker(base["workers"], base_state, figure)
            mine = mean_worker(ours["workers"], state, figure)
            theirs = mean_worker(published["workers"], state, figure)
            # Net of the baseline: what holding and reading the data costs, without the copies of
            # the parent's imported modules that any forked worker makes.
            mine_net, theirs_net = max(mine - baseline, 1.0), theirs - baseline
            ratio = theirs_net / mine_net
            bar = ""
            if figure == "private_dirty" and state != "plans":
                bar = f"net: ours < 1/{MEMORY_BAR:.0f}: {'holds' if ratio > MEMORY_BAR else 'FAILS'}"
            table.append(
                (
                    f"per-worker {figure.upper().replace('_', ' ')}, {label}",
                    f"{mine:,.0f} MiB (net {mine - baseline:,.0f})",
                    f"{theirs:,.0f} MiB (net {theirs_net:,.0f})",
                    f"{theirs / mine:.1f}x; net {ratio:.1f}x",
                    bar,
                )
            )
    for figure in ("uss", "private_dirty", "rss"):
        table.append(
            (
                f"baseline worker {figure.upper().replace('_', ' ')} (no data), at fork / after gc.collect()",
                f"{mean_worker(base['workers'], 'start', figure):,.0f} / "
                f"{mean_worker(base['workers'], 'collected', figure):,.0f} MiB",
                "",
                "",
                "",
            )
        )
    table.append(
        (
            "epoch of row access per worker",
            f"{mean_worker_plain(ours, 'epoch_s'):.0f} s",
            f"{mean_worker_plain(published, 'epoch_s'):.1f} s",
            "",
            "",
        )
    )
    return table


def mean_worker_plain(phase: dict[str, Any], figure: str) -> float:
    return sum(w[figure] for w in phase["workers"]) / len(phase["workers"])


def markdown(table: list[tuple[str, str, str, str, str]]) -> str:
    lines = ["| figure | ours | published way | published / ours | bar |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"episodes": args.episodes, "folders": args.folders, "plans": args.plans}
    results["source"] = run_phase(args, "generate")
    results["build"] = run_phase(args, "build")
    if results["build"]["build_s"] >= BUILD_BAR_S or args.profile:
        results["profile"] = run_phase(args, "profile")["profile"]
    results["decode"] = run_phase(args, "decode")
    results["workers"] = {
        way: run_phase(args, "workers", "--way", way, "--index", results["build"]["index"])
        for way in ("baseline", "ours", "published")
    }
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=150_000)
    parser.add_argument("--folders", type=int, default=2000, help="frame folders the episodes share")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the source here; default a temp dir")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--decode-files", type=int, default=2000, help="640x480 JPEGs for the decode rate")
    parser.add_argument("--workers", type=int, default=2, help="forked loader workers (K)")
    parser.add_argument("--plans", type=int, default=3000, help="random samples each worker plans")
    parser.add_argument("--profile", action="store_true", help="also profile the build (cProfile)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=("ours", "published", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        print(RESULT + json.dumps(PHASES[args.phase](args)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="data-scale-") as temp:
        args.workdir = (args.workdir or Path(temp)).resolve()
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run_all(args)
    table = rows(results)
    results["table"] = table
    print(markdown(table))
    if "profile" in results:
        print("\nBuild profile (cProfile):\n" + results["profile"])
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    build_ok = results["build"]["build_s"] < BUILD_BAR_S
    memory_ok = all("FAILS" not in row[4] for row in table)
    return 0 if build_ok and memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())
