"""Score trained models on held-out navigation episodes: `python -m streamvln_model.evaluate`.

    python -m streamvln_model.evaluate --model runs/a --model models:/streamvln@champion \\
        --video_folder data/heldout --train_video_folder data/r2r,data/rxr --output scores.json

Every model is scored teacher-forced (evaluation.py) on the same samples, built exactly as
training builds them (the sample index, `VLNActionDataset`, the collator). The held-out folders
must hold scenes the models never trained on: a scene is the part of an episode's folder name
before the first `_` (the published trajectory data names folders `images/<scan id>_<dataset>_
<episode>`, e.g. `images/17DRP5sb8fy_r2r_000012`), and a held-out folder sharing a scene with a
training folder is refused (exit code 2) before any weight loads.

The flow never loads weights, so it runs this module as a subprocess (tasks/evaluation.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE, SampleShape
from streamvln_model.data import locations as storage
from streamvln_model.data.datasets.sampling import validate_sampling
from streamvln_model.data.formats.annotations import ANNOTATIONS, load_episodes, split_folders
from streamvln_model.files import write_text_atomically

# The shape fields a model's config.json records (the training run's values).
MODEL_SHAPE_FIELDS = frozenset({"num_history", "num_future_steps"})
MAX_LENGTH_FALLBACK = 32768  # the published --model_max_length


class SceneOverlapError(ValueError):
    """The held-out episodes share scenes with the training episodes: the score would not be held out."""


def scene_of(video: str) -> str:
    """`images/17DRP5sb8fy_r2r_000012` -> `17DRP5sb8fy` (the folder name up to its first `_`)."""
    name = video.rstrip("/").rsplit("/", 1)[-1]
    return name.split("_", 1)[0]


def folder_scenes(folder: str) -> Counter:
    """Scene -> episodes in one source folder, from its annotations.json alone (no frame listing)."""
    location = storage.join(folder, ANNOTATIONS)
    try:
        episodes = json.loads(storage.read_text(location))
    except json.JSONDecodeError as err:
        raise ValueError(f"{location}: not JSON ({err}). Fix: a JSON list of episodes") from None
    if not isinstance(episodes, list):
        raise ValueError(f"{location}: expected a JSON list of episodes, got {type(episodes).__name__}")
    scenes: Counter = Counter()
    for i, episode in enumerate(episodes):
        video = episode.get("video") if isinstance(episode, dict) else None
        if not isinstance(video, str) or not video.strip():
            raise ValueError(f"{location}: episode [{i}] field 'video': expected the frame folder's name")
        scenes[scene_of(video)] += 1
    return scenes


def check_heldout(heldout: str | list[str], train: str | list[str] | None) -> list[str]:
    """The held-out scenes (sorted); SceneOverlapError naming every shared scene and its folders."""
    heldout_scenes = {folder: folder_scenes(folder) for folder in split_folders(heldout)}
    if not heldout_scenes:
        raise ValueError("--video_folder: no held-out folder given")
    train_scenes = {folder: folder_scenes(folder) for folder in split_folders(train)}
    overlaps = []
    for held, scenes in heldout_scenes.items():
        for trained, seen in train_scenes.items():
            shared = sorted(set(scenes) & set(seen))
            if shared:
                overlaps.append(f"{held} and training folder {trained} share scene(s) {', '.join(shared)}")
    if overlaps:
        raise SceneOverlapError(
            "the held-out episodes are not held out: "
            + "; ".join(overlaps)
            + ". Fix: evaluate on episodes of scenes the models never trained on (as R2R/RxR val_unseen)"
        )
    return sorted(set().union(*heldout_scenes.values()))


@dataclass(frozen=True)
class SampleSettings:
    """How held-out samples are cut: the sample shape and the length limit (None: the models')."""

    shape: SampleShape = STREAMVLN_SHAPE
    model_max_length: int | None = None
    # The shape fields the models' configs decide (the command line left them unset).
    from_models: frozenset[str] = MODEL_SHAPE_FIELDS

    @classmethod
    def asked(cls, values: Mapping[str, Any], model_max_length: int | None = None) -> SampleSettings:
        """From the command line's shape flags (None = unset): history and turn size left unset come
        from the models' configs, num_frames from StreamVLN's shape."""
        shape = {name: values.get(name) for name in SampleShape.names()}
        unset = frozenset(name for name in MODEL_SHAPE_FIELDS if shape[name] is None)
        return cls(STREAMVLN_SHAPE.filled(**shape), model_max_length, unset)

    def record(self) -> dict[str, Any]:
        return {**self.shape.as_dict(), "model_max_length": self.model_max_length}


def common_settings(settings: SampleSettings, configs: dict[str, object]) -> SampleSettings:
    """One set of settings for every model, so every model answers the same samples.

    History and turn size must agree (they change what a sample is); the length limit is the
    shortest any model trained with, so no model is scored on text it never saw whole.
    """
    problems = []
    resolved = {}
    for name in sorted(settings.from_models):
        ours = getattr(settings.shape, name)
        values = {key: getattr(config, name, None) or ours for key, config in configs.items()}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{key}: {value}" for key, value in values.items())
            problems.append(f"{name} differs ({listed})")
        resolved[name] = next(iter(values.values()))
    if problems:
        raise ValueError(
            f"the models were trained on different samples: {'; '.join(problems)}. Fix: pass "
            "--num_history and --num_future_steps to score them on the same samples"
        )
    limits = [c.tokenizer_model_max_length for c in configs.values() if c.tokenizer_model_max_length]
    limit = settings.model_max_length or min(limits, default=None) or MAX_LENGTH_FALLBACK
    return SampleSettings(replace(settings.shape, **resolved), limit, frozenset())


def heldout_index(heldout: str | list[str], settings: SampleSettings):
    """The held-out sample index, checked and built as training builds it."""
    from streamvln_model.data.index.tables import build_index

    shape = settings.shape
    validate_sampling(shape.num_frames, shape.num_history, shape.num_future_steps)
    return build_index(load_episodes(heldout), shape.num_frames, shape.num_history, shape.num_future_steps)


def score_model(folder: str, index, settings: SampleSettings, batch_size: int = 2) -> dict:
    """Load one trained model (any save layout) and score it on the index's samples."""
    from transformers import AutoTokenizer

    from streamvln_model.checkpoint.loading import load_trained
    from streamvln_model.data.datasets.collator import DataCollatorForNavigation
    from streamvln_model.data.datasets.navigation import VLNActionDataset
    from streamvln_model.model.conversation import prepare_tokenizer
    from streamvln_model.model.vision import build_image_processor
    from streamvln_model.registry.scores import navigation_scores

    model = load_trained(folder, merge=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="right")
    spec = prepare_tokenizer(tokenizer)
    dataset = VLNActionDataset(
        index,
        tokenizer,
        spec,
        build_image_processor(model.get_vision_tower().config),
        shape=settings.shape,
    )
    collator = DataCollatorForNavigation(tokenizer.pad_token_id, settings.model_max_length)
    return navigation_scores(model, dataset, collator, tokenizer, batch_size).to_dict()


def evaluate_models(
    models: list[str],
    heldout: str | list[str],
    train: str | list[str] | None = None,
    settings: SampleSettings | None = None,
    batch_size: int = 2,
) -> dict:
    """Scores of every model (a folder or models:/ URI, keyed as given) on the same held-out samples."""
    from streamvln_model.model.configuration import StreamVLNConfig
    from streamvln_model.registry.models import resolve_model

    if not models:
        raise ValueError("--model: give at least one model folder or models:/ URI")
    scenes = check_heldout(heldout, train)  # before anything is downloaded or loaded
    folders = {key: resolve_model(key) for key in dict.fromkeys(models)}
    configs = {key: StreamVLNConfig.from_pretrained(folder) for key, folder in folders.items()}
    settings = common_settings(settings or SampleSettings(), configs)
    index, summary = heldout_index(heldout, settings)
    return {
        "models": {key: score_model(folder, index, settings, batch_size) for key, folder in folders.items()},
        "resolved": folders,
        "heldout": {
            "folders": split_folders(heldout),
            "train_folders": split_folders(train),
            "scenes": scenes,
            "episodes": summary.episodes,
            "samples": summary.samples,
            "settings": settings.record(),
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streamvln_model.evaluate", description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="folder or models:/ URI; repeatable")
    parser.add_argument("--video_folder", required=True, help="held-out source folders, comma-separated")
    parser.add_argument("--train_video_folder", default=None, help="the models' training folders")
    parser.add_argument("--num_frames", type=int, default=None, help="default: StreamVLN's")
    parser.add_argument("--num_history", type=int, default=None, help="default: the model's config")
    parser.add_argument("--num_future_steps", type=int, default=None, help="default: the model's config")
    parser.add_argument("--model_max_length", type=int, default=None, help="default: the model's config")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--output", required=True, help="where to write the scores (JSON)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = SampleSettings.asked(vars(args), args.model_max_length)
    try:
        result = evaluate_models(
            args.model, args.video_folder, args.train_video_folder, settings, args.batch_size
        )
    except (ValueError, OSError) as err:  # bad input: the message, not a traceback
        sys.stderr.write(f"streamvln evaluate: error: {err}\n")
        return 2
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output, json.dumps(result, indent=1, sort_keys=True) + "\n")
    for key, scores in result["models"].items():
        print(
            f"{key}: exact turn match {scores['exact_turn_match']:.4f}, action accuracy "
            f"{scores['action_accuracy']:.4f} over {scores['turns']} turns, {scores['actions']} actions"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
