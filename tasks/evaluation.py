"""Held-out evaluation as a flow stage: the scoring worker runs as a subprocess.

The flow process never loads weights, so `python -m streamvln_model.evaluate` scores the models
(folders or models:/ URIs, downloaded once into the worker's cache) and writes a JSON file; its
output streams into the Prefect log as training's does (tasks/training.py). The scene check runs
here first, in seconds, so a held-out set that is not held out fails before any download.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from prefect import get_run_logger

from streamvln_model.model.tokenizer import cache_root
from streamvln_model.registry.heldout import check_heldout
from tasks.caching import side_effect_task
from tasks.training import TrainingFailed, run_streaming, worker_env

# Flags of the worker that shape the held-out samples (the training flags of the same names).
DATA_FLAGS = ("num_frames", "num_history", "num_future_steps", "model_max_length")


class EvaluationFailed(RuntimeError):
    """The scoring worker exited without scores; the message holds its last lines and log path."""


def evaluation_command(
    model_dirs: list[str], heldout: str, train_folders: str | None, data_flags: dict, output: Path
) -> list[str]:
    unknown = sorted(set(data_flags) - set(DATA_FLAGS))
    if unknown:
        raise ValueError(
            f"data_flags: unknown {', '.join(unknown)}; the evaluation takes {', '.join(DATA_FLAGS)}"
        )
    command = [
        sys.executable,
        "-m",
        "streamvln_model.evaluate",
        "--video_folder",
        heldout,
        "--output",
        str(output),
    ]
    for model in model_dirs:
        command += ["--model", model]
    if train_folders:
        command += ["--train_video_folder", train_folders]
    for name in DATA_FLAGS:
        if data_flags.get(name) is not None:
            command += [f"--{name}", str(data_flags[name])]
    return command


@side_effect_task("held-out-evaluation")
def evaluate_models(
    model_dirs: list[str],
    heldout: str,
    train_folders: str | None,
    data_flags: dict,
    timeout_s: int | None = None,
    work_dir: str | None = None,
) -> dict:
    """Scores of every model on the held-out folders: `{"models": {model: scores}, "heldout": ...}`."""
    scenes = check_heldout(heldout, train_folders)
    logger = get_run_logger()
    logger.info("held-out scenes %s; scoring %s", ", ".join(scenes), ", ".join(model_dirs))
    root = cache_root() / "evaluations"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="run-", dir=root))
    folder.mkdir(parents=True, exist_ok=True)
    output, log_path = folder / "scores.json", folder / "evaluate.log"
    command = evaluation_command(model_dirs, heldout, train_folders, data_flags, output)
    env = worker_env(None, None)
    if "OMP_NUM_THREADS" not in os.environ:  # one process, not one per rank: let torch use every core
        env.pop("OMP_NUM_THREADS", None)
    try:
        run_streaming(command, env, log_path, timeout_s)
    except TrainingFailed as err:  # run_streaming speaks of training; say what failed here
        raise EvaluationFailed(
            f"held-out evaluation failed; last lines of {err.log_path}:\n" + "\n".join(err.tail)
        ) from None
    scores = json.loads(output.read_text())
    for model, values in scores["models"].items():
        logger.info(
            "%s: exact turn match %.4f, action accuracy %.4f",
            model,
            values["exact_turn_match"],
            values["action_accuracy"],
        )
    return scores
