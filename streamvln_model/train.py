"""The training worker: `torchrun --nproc_per_node=N -m streamvln_model.train <published flags>`.

Also `... -m streamvln_model.train --plan plan.json`: the flags the flow's trainer stage wrote.

Reads the three argument dataclasses, then: sample index (validated first, so bad data fails
before weights load) -> model -> freezing -> tokenizer -> image preprocessing (defined by the
tower) -> dataset -> Trainer; trains and saves a full model folder that `from_pretrained` loads.
With `--data_index` (written by the Prefect flow) it memory-maps the validated index instead of
scanning the data again. With `MLFLOW_RUN_ID` set, rank 0 logs per-step metrics into that run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import datasets
import transformers
from transformers.trainer_utils import get_last_checkpoint

from .arguments import DataArguments, TrainingArguments, parser
from .builder import load_model, load_prepared_tokenizer, validate_arguments
from .data.annotations import load_episodes
from .data.collator import DataCollatorForNavigation
from .data.index import build_index, load_index
from .data.vln_dataset import VLNActionDataset
from .freezing import apply_freezing, trainable_parts
from .trainer import MlflowRunCallback, ProgressCallback, StreamVLNTrainer
from .vision import build_image_processor

logger = logging.getLogger("streamvln.train")


def load_or_build_index(data_args: DataArguments) -> datasets.Dataset:
    """The flow's prebuilt index, or scan + validate the folders now (standalone runs)."""
    if data_args.data_index:
        return load_index(data_args.data_index)
    episodes = load_episodes(data_args.video_folder)
    return build_index(episodes, data_args.num_frames, data_args.num_history, data_args.num_future_steps)[0]


def make_supervised_data_module(
    index: datasets.Dataset, tokenizer, token_spec, image_processor, data_args: DataArguments, training_args
) -> dict:
    dataset = VLNActionDataset(
        index,
        tokenizer,
        token_spec,
        image_processor,
        num_frames=data_args.num_frames,
        num_history=data_args.num_history,
        num_future_steps=data_args.num_future_steps,
        seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
    )
    collator = DataCollatorForNavigation(
        pad_token_id=tokenizer.pad_token_id, model_max_length=training_args.model_max_length
    )
    return {"train_dataset": dataset, "data_collator": collator}


def _callbacks() -> list:
    callbacks = [ProgressCallback()]
    if os.environ.get("MLFLOW_RUN_ID"):
        callbacks.append(MlflowRunCallback())
    return callbacks


def _report_to(training_args: TrainingArguments) -> None:
    """In a flow run our callback owns the MLflow run; the stock one would log params twice."""
    if os.environ.get("MLFLOW_RUN_ID") and "mlflow" in (training_args.report_to or []):
        training_args.report_to = [r for r in training_args.report_to if r != "mlflow"] or ["none"]


def save_trained_model(trainer: StreamVLNTrainer, tokenizer, image_processor, output_dir: str) -> None:
    trainer.save_state()
    trainer.model.config.use_cache = True
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        image_processor.save_pretrained(output_dir)


def worker_argv(argv: list[str]) -> list[str]:
    """`--plan plan.json [more flags]` -> the plan's flags followed by the extra ones (which win)."""
    if argv[:1] != ["--plan"]:
        return argv
    if len(argv) < 2:
        raise SystemExit("--plan needs the path of a plan.json written by the flow")
    plan = json.loads(Path(argv[1]).read_text())
    return [*plan["worker_argv"], *argv[2:]]


def train(argv: list[str] | None = None) -> None:
    argv = worker_argv(list(sys.argv[1:] if argv is None else argv))
    model_args, data_args, training_args = parser().parse_args_into_dataclasses(args=argv)
    validate_arguments(model_args, data_args, training_args)
    _report_to(training_args)
    transformers.set_seed(training_args.seed)

    # Data first: bad annotations must fail before minutes of weight loading. Then the model:
    # the tower it carries defines the image preprocessing the dataset needs.
    index = load_or_build_index(data_args)
    model = load_model(model_args, data_args, training_args)
    counts = apply_freezing(model, trainable_parts(model_args, training_args))
    logger.info(
        "world size %d; parameters: total %d, trainable %d",
        training_args.world_size,
        counts["total"],
        counts["trainable"],
    )
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    tokenizer, token_spec = load_prepared_tokenizer(model_args)
    image_processor = build_image_processor(model.get_vision_tower().config)
    data_module = make_supervised_data_module(
        index, tokenizer, token_spec, image_processor, data_args, training_args
    )

    trainer = StreamVLNTrainer(
        model=model, args=training_args, processing_class=tokenizer, callbacks=_callbacks(), **data_module
    )
    last = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
    if last:
        logger.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    save_trained_model(trainer, tokenizer, image_processor, training_args.output_dir)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout
    )
    train()


if __name__ == "__main__":
    main()
