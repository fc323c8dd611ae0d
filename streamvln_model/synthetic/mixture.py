"""A complete synthetic stage-two data tree: navigation, DAgger, QA, ScanQA/SQA3D, MMC4 and the
co-training YAML, laid out as the published stage-two script expects it.

StreamVLN's stage two (arXiv 2507.05240; InternRobotics/StreamVLN
`scripts/streamvln_train_slurm.sh`) trains on trajectory folders (`--video_folder`, comma
separated, DAgger rounds included) plus a YAML (`--data_path`) whose groups `QA_datasets`,
`SCANQA_datasets` and `MMC4_datasets` list entries with `json_path`, `sampling_strategy` (`all`,
`first:N`, `end:N`, `random:N`, N may be `P%`) and `sampling_subset`; the media roots come from
`--qa_video_folder`, `--scanqa_video_folder`, `--mmc4_video_folder`. `write_mixture` writes all
of it and returns the exact flags to train on it.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from streamvln_model.data import locations as storage
from streamvln_model.files import write_text_atomically
from streamvln_model.synthetic.common import check_seed, check_size, dataset_folder
from streamvln_model.synthetic.mmc4 import IMAGES_DIR, MMC4Summary, write_mmc4
from streamvln_model.synthetic.scanqa import ScanQASummary, write_scanqa
from streamvln_model.synthetic.trajectories import TrajectorySummary, write_trajectories
from streamvln_model.synthetic.video_qa import VideoQASummary, write_video_qa

MIXTURE_YAML = "mixture.yaml"
# The published stage-two script's folder names (data/trajectory_data/R2R, data/dagger_data/R2R,
# data/co-training_data/{LLaVA-Video-178K,ScanNet,MMC4-core/images}).
NAVIGATION_DIR = "trajectory_data/R2R"
DAGGER_DIR = "dagger_data/R2R"
QA_DIR = "co-training_data/LLaVA-Video-178K"
SCANQA_DIR = "co-training_data/ScanNet"
MMC4_DIR = "co-training_data/MMC4-core"
QA_SUBSET = "videos,shareVideoGPTV"  # keywords of both our video kinds: the subset keeps every sample
# One independent seed per part, so adding documents never changes the videos, and so on.
PARTS = ("navigation", "dagger", "qa", "scanqa", "mmc4")


@dataclass(frozen=True)
class MixtureSummary:
    """What was written and how to train on it."""

    out: Path
    yaml_path: Path
    navigation: TrajectorySummary
    dagger: TrajectorySummary
    qa: VideoQASummary
    scanqa: ScanQASummary
    mmc4: MMC4Summary
    # Training argument name -> value: video_folder, data_path, qa_video_folder,
    # scanqa_video_folder, mmc4_video_folder, multi_task_training.
    flags: dict[str, str]

    def command_line(self) -> str:
        """The flags as one shell-quoted `--name value` string."""
        return " ".join(f"--{name} {shlex.quote(value)}" for name, value in self.flags.items())


def part_seed(seed: int, part: str) -> int:
    """A stable seed for one part of the tree, derived from the mixture's seed."""
    return int(np.random.default_rng([seed, PARTS.index(part)]).integers(2**31 - 1))


def _locator(out: Path, relative_to: str | Path | None, url_prefix: str | None):
    """How paths inside the tree are written into the YAML and the flags."""
    if relative_to is not None and url_prefix is not None:
        raise ValueError("relative_to and url_prefix exclude each other; fix: pass only one of them")
    if url_prefix is not None:
        if not storage.is_remote(url_prefix):
            raise ValueError(f"url_prefix {url_prefix!r} is not a URL; fix: pass e.g. s3://bucket/prefix")
        return lambda relative: storage.join(url_prefix, relative)
    if relative_to is not None:
        base = Path(relative_to).resolve()
        return lambda relative: Path(os.path.relpath(out.resolve() / relative, base)).as_posix()
    return lambda relative: str(out.resolve() / relative)


def mixture_config(locate, qa: VideoQASummary, scanqa: ScanQASummary, mmc4: MMC4Summary) -> dict:
    """The co-training YAML: every group, and four different sampling strategies among them."""
    mmc4_entries = [{"json_path": locate(f"{MMC4_DIR}/{mmc4.shard_names[0]}"), "sampling_strategy": "all"}]
    mmc4_entries += [
        {"json_path": locate(f"{MMC4_DIR}/{name}"), "sampling_strategy": "end:50%"}
        for name in mmc4.shard_names[1:]
    ]
    return {
        "QA_datasets": [
            {
                "json_path": locate(f"{QA_DIR}/{qa.json_path.relative_to(qa.out).as_posix()}"),
                "sampling_strategy": "all",
                "sampling_subset": QA_SUBSET,
            }
        ],
        "SCANQA_datasets": [
            {
                "json_path": locate(f"{SCANQA_DIR}/{scanqa.scanqa_json.name}"),
                "sampling_strategy": "random:50%",
            },
            {
                "json_path": locate(f"{SCANQA_DIR}/{scanqa.sqa3d_json.name}"),
                "sampling_strategy": f"first:{max(1, scanqa.sqa3d_questions // 2)}",
            },
        ],
        "MMC4_datasets": mmc4_entries,
    }


def training_flags(locate) -> dict[str, str]:
    """The stage-two data arguments that point at the tree."""
    return {
        "video_folder": ",".join(locate(folder) for folder in (NAVIGATION_DIR, DAGGER_DIR)),
        "data_path": locate(MIXTURE_YAML),
        "qa_video_folder": locate(QA_DIR),
        "scanqa_video_folder": locate(SCANQA_DIR),
        "mmc4_video_folder": locate(f"{MMC4_DIR}/{IMAGES_DIR}"),
        "multi_task_training": "True",
    }


def write_mixture(
    out: Path,
    seed: int = 0,
    episodes: int = 8,
    dagger_episodes: int = 4,
    min_steps: int = 20,
    max_steps: int = 40,
    videos: int = 6,
    frame_folders: int | None = None,
    video_frames: int = 16,
    scenes: int = 3,
    frames_per_scene: int = 40,
    documents: int = 8,
    shards: int = 2,
    image_size: tuple[int, int] = (64, 48),
    relative_to: str | Path | None = None,
    url_prefix: str | None = None,
    overwrite: bool = False,
) -> MixtureSummary:
    """Write the whole stage-two tree under `out`, its YAML last; deterministic for a given seed.

    Paths in the YAML and the flags are absolute, or relative to `relative_to` (the folder
    training runs from), or under `url_prefix` (where the tree will be uploaded, e.g.
    `s3://bucket/prefix`). `frame_folders` (default: a third of `videos`) of the QA videos are
    written as frame folders. The defaults train on a CPU in about a minute; scale via the counts.
    """
    check_seed(seed)
    size = check_size(image_size, "image_size", even=True)
    if frame_folders is None:
        frame_folders = videos // 3  # both kinds once there are 3 videos or more
    out = Path(out)
    locate = _locator(out, relative_to, url_prefix)
    with dataset_folder(out, overwrite) as partial:
        nav_args = {"min_steps": min_steps, "max_steps": max_steps, "image_size": size}
        navigation = write_trajectories(
            partial / NAVIGATION_DIR, episodes, seed=part_seed(seed, "navigation"), **nav_args
        )
        dagger = write_trajectories(
            partial / DAGGER_DIR, dagger_episodes, seed=part_seed(seed, "dagger"), **nav_args
        )
        qa = write_video_qa(
            partial / QA_DIR, videos, part_seed(seed, "qa"), video_frames, size, frame_folders=frame_folders
        )
        scanqa = write_scanqa(partial / SCANQA_DIR, scenes, frames_per_scene, part_seed(seed, "scanqa"), size)
        mmc4 = write_mmc4(partial / MMC4_DIR, documents, shards, part_seed(seed, "mmc4"), size)
        config = mixture_config(locate, qa, scanqa, mmc4)
        header = "# StreamVLN co-training data (--data_path), written by `streamvln synth mixture`.\n"
        write_text_atomically(partial / MIXTURE_YAML, header + yaml.safe_dump(config, sort_keys=False))
    return MixtureSummary(
        out=out,
        yaml_path=out / MIXTURE_YAML,
        navigation=replace(navigation, out=out / NAVIGATION_DIR),
        dagger=replace(dagger, out=out / DAGGER_DIR),
        qa=replace(qa, out=out / QA_DIR),
        scanqa=replace(scanqa, out=out / SCANQA_DIR),
        mmc4=replace(mmc4, out=out / MMC4_DIR),
        flags=training_flags(locate),
    )
