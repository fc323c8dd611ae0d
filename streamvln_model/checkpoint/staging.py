"""The Trainer's `checkpoint-N` folders during training: written aside, renamed when complete,
rotated, resumed from; with LoRA, the other trained weights beside the adapter.

Checkpoints are written into <output_dir>/partial-checkpoints/checkpoint-N and moved to
<output_dir>/checkpoint-N once every rank has written its part. Neither transformers'
`get_last_checkpoint` (`^checkpoint-\\d+$`) nor its rotation (`checkpoint-*`) sees this folder,
so a checkpoint a fault interrupted is never resumed from nor counted as the newest one.
`StreamVLNTrainer` (training/trainer.py) points its save at the staging folder and calls
`publish_staged_checkpoint` after the barrier.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from streamvln_model.checkpoint.adapters import non_lora_trainables
from streamvln_model.checkpoint.loading import NON_LORA_WEIGHTS, load_named

STAGING_DIR = "partial-checkpoints"
logger = logging.getLogger("streamvln.checkpoint")


def discard_partial_checkpoints(output_dir: str | Path) -> list[str]:
    """Remove checkpoints a fault interrupted while they were written; returns their names.

    Call it on the rank that owns the folder (`args.should_save`), before training starts: no
    rank writes a checkpoint before the first optimizer step, which every rank takes together.
    """
    staging = Path(output_dir) / STAGING_DIR
    if not staging.is_dir():
        return []
    names = sorted(p.name for p in staging.iterdir())
    shutil.rmtree(staging)
    if names:
        logger.warning(
            "discarded %s in %s: a fault interrupted their writing; resuming from the newest complete one",
            ", ".join(names),
            staging,
        )
    return names


def resume_checkpoint(output_dir: str | Path, owner: bool) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir` (None: start from step 0).

    `owner` (the rank that saves into the folder) first removes interrupted checkpoints.
    """
    if not Path(output_dir).is_dir():
        return None
    if owner:
        discard_partial_checkpoints(output_dir)
    return get_last_checkpoint(str(output_dir))


def staging_dir(run_dir: str | Path) -> str:
    """Where the Trainer writes a checkpoint of the run in `run_dir` until it is complete."""
    return os.path.join(run_dir, STAGING_DIR)


def publish_checkpoint(staged: Path, target: Path) -> None:
    """Move a complete checkpoint to its final name in one rename (atomic on POSIX filesystems).

    A folder already there holds the same step from an earlier attempt (only a run pointed back
    at an older checkpoint meets one); the one just written replaces it.
    """
    if target.exists():
        shutil.rmtree(target)
    os.replace(staged, target)


def publish_staged_checkpoint(
    run_dir: str | Path, step: int, save_total_limit: int | None, best_model_checkpoint: str | None
) -> Path:
    """On the owning rank, once every rank's part is on disk: rename the staged `checkpoint-<step>`
    to its final name, then rotate `save_total_limit` (which now counts it). Returns its path."""
    run_dir = Path(run_dir)
    name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
    publish_checkpoint(run_dir / STAGING_DIR / name, run_dir / name)
    with contextlib.suppress(OSError):  # left empty: no other checkpoint is being written
        (run_dir / STAGING_DIR).rmdir()
    rotate_checkpoints(
        output_dir=str(run_dir),
        save_total_limit=save_total_limit,
        best_model_checkpoint=best_model_checkpoint,
        use_mtime=True,
    )
    return run_dir / name


def save_non_lora_weights(model, output_dir: str | Path, state_dict: dict | None = None) -> None:
    """With LoRA, the other trained weights (e.g. the projector) beside the adapter in checkpoint-N.

    peft saves only the adapter, so a run resumed from it would restart those weights from the
    base checkpoint (the published trainer does). Nothing is written when they are not all at
    hand (a sharded model without a consolidated `state_dict`: DeepSpeed's own checkpoint then
    carries them).
    """
    tensors = non_lora_trainables(model, state_dict)
    if tensors is not None:
        save_file(tensors, str(Path(output_dir) / NON_LORA_WEIGHTS), metadata={"format": "pt"})


def load_non_lora_weights(model, checkpoint: str | Path) -> None:
    """The resume side of `save_non_lora_weights` (nothing when the checkpoint has none)."""
    saved = Path(checkpoint) / NON_LORA_WEIGHTS
    if saved.is_file():
        load_named(model, saved)
