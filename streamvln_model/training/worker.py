"""The training worker: `torchrun --nproc_per_node=N -m streamvln_model.train <published flags>`.

Also `... -m streamvln_model.train --plan plan.json`: the resolved run the flow's trainer stage
wrote (flags as typed data plus the launch machine's flags; no string round trip), and
`python -m streamvln_model.train --print_arguments <flags>`: the resolved arguments as JSON, for
checking a command line without training.

Order matters and reads top to bottom: arguments -> preflight (every problem at once, before
any weight loads) -> sample index (validated, so bad data fails before the model loads) ->
model -> freezing -> tokenizer -> image preprocessing (defined by the tower) -> dataset ->
Trainer -> train -> save (and reload check). With `MLFLOW_RUN_ID` set, rank 0 logs per-step
metrics into that run.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from pathlib import Path

import transformers

from streamvln_model.checkpoint.save import save_trained_model
from streamvln_model.checkpoint.staging import resume_checkpoint
from streamvln_model.config.arguments import (
    Arguments,
    DataArguments,
    TrainingArguments,
    as_data,
    resolve_argv,
    resolve_flags,
)
from streamvln_model.config.errors import InputError
from streamvln_model.config.preflight import MachinePlan, preflight
from streamvln_model.config.secrets import move_secrets_to_env, secrets_in_environment
from streamvln_model.config.strategies import shut_down_process_group
from streamvln_model.data.datasets.collator import DataCollatorForNavigation
from streamvln_model.data.datasets.training_set import training_dataset
from streamvln_model.data.index.folder import TrainingIndex, checked_index, open_index
from streamvln_model.data.validation.check import DataSettings
from streamvln_model.model.builder import load_model, load_prepared_tokenizer
from streamvln_model.model.freezing import apply_freezing, trainable_parts
from streamvln_model.model.lora import add_training_options, restore_training_dtypes, unwrap
from streamvln_model.model.tokenizer import cache_root
from streamvln_model.model.vision import build_image_processor
from streamvln_model.training.trainer import (
    MlflowRunCallback,
    ProgressCallback,
    ShardingCallback,
    StreamVLNTrainer,
)

logger = logging.getLogger("streamvln.train")

PLAN_FLAG = "--plan"
PRINT_FLAG = "--print_arguments"
# Per-process values that legitimately differ between the flow's resolution and a worker's, and
# values transformers derives from the launch machine's flags (use_cpu turns pin_memory off).
PER_PROCESS_FIELDS = frozenset({"local_rank"})
LAUNCH_DERIVED_FIELDS = frozenset({"dataloader_pin_memory"})


def load_or_build_index(data_args: DataArguments, training_args: TrainingArguments) -> TrainingIndex:
    """The flow's prebuilt index, or check + index the data now (standalone runs), memory-mapped."""
    settings = DataSettings.of(vars(data_args), vars(training_args))
    if data_args.data_index:
        return open_index(data_args.data_index, settings)
    progress = training_args.process_index == 0 and not training_args.disable_tqdm
    return open_index(checked_index(settings, cache_root() / "data", progress=progress), settings)


def make_supervised_data_module(
    index: TrainingIndex, tokenizer, token_spec, image_processor, data_args: DataArguments, training_args
) -> dict:
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    dataset = training_dataset(index, tokenizer, token_spec, image_processor, data_args, seed)
    collator = DataCollatorForNavigation(
        pad_token_id=tokenizer.pad_token_id, model_max_length=training_args.model_max_length
    )
    return {"train_dataset": dataset, "data_collator": collator}


def _callbacks() -> list:
    callbacks = [ProgressCallback(), ShardingCallback()]
    if os.environ.get("MLFLOW_RUN_ID"):
        callbacks.append(MlflowRunCallback())
    return callbacks


def _report_to(training_args: TrainingArguments) -> None:
    """In a flow run our callback owns the MLflow run; the stock one would log params twice."""
    if os.environ.get("MLFLOW_RUN_ID") and "mlflow" in (training_args.report_to or []):
        training_args.report_to = [r for r in training_args.report_to if r != "mlflow"] or ["none"]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def load_plan_arguments(plan_path: str | Path) -> Arguments:
    """The run the flow resolved: its flags plus the launch flags, re-resolved and checked equal."""
    plan = json.loads(Path(plan_path).read_text())
    arguments = resolve_flags({**plan["flags"], **plan["worker_flags"]})
    ignored = PER_PROCESS_FIELDS | LAUNCH_DERIVED_FIELDS | set(plan["worker_flags"])
    mismatched = plan_mismatches(plan["arguments"], as_data(arguments), ignored)
    if mismatched:
        raise SystemExit(
            f"{plan_path}: this worker resolves {', '.join(mismatched)} differently from the flow that wrote "
            "the plan (different library versions?). Fix: install the same streamvln-pipeline and "
            "transformers "
            "on the flow host and the workers"
        )
    return arguments


def plan_mismatches(planned: dict, resolved: dict, ignored: set[str] | frozenset[str]) -> list[str]:
    """Fields (group.name) whose resolved value differs from the plan's, outside `ignored`."""
    return sorted(
        f"{group}.{key}"
        for group, values in planned.items()
        for key, value in values.items()
        if key not in ignored and resolved[group].get(key) != value
    )


def command_line_arguments(argv: list[str]) -> Arguments:
    """The published command line. On a host without CUDA, torchrun needs `--use_cpu --ddp_backend
    gloo` for one real process group (else each process trains alone at world size 1): added here,
    and reported, before TrainingArguments sets up the device."""
    if not _cuda_available() and not any(a.split("=")[0] == "--use_cpu" for a in argv):
        logger.info("no CUDA device on this host: adding --use_cpu true --ddp_backend gloo")
        argv = [*argv, "--use_cpu", "true", "--ddp_backend", "gloo"]
    return resolve_argv(argv)


def worker_arguments(argv: list[str]) -> Arguments:
    if argv[:1] == [PLAN_FLAG]:
        if len(argv) != 2:
            raise SystemExit("--plan takes exactly one argument: the plan.json the flow wrote")
        return load_plan_arguments(argv[1])
    return command_line_arguments(argv)


def print_arguments(argv: list[str]) -> None:
    """Resolve a command line exactly as training would (host-independent part) and print it."""
    arguments = resolve_argv(argv)
    sys.stdout.write(json.dumps(as_data(arguments), indent=1, sort_keys=True, default=str) + "\n")


def apply_machine_plan(training_args: TrainingArguments, plan: MachinePlan) -> None:
    """Substitutions preflight decided (attention kernel, TF32), logged once by rank 0."""
    for key in ("attn_implementation", "tf32"):
        if key in plan.worker_flags:
            setattr(training_args, key, plan.worker_flags[key])
    if training_args.process_index == 0:
        for line in plan.substitutions:
            logger.warning("substitution: %s", line)


def init_zero3_communication(training_args: TrainingArguments) -> None:
    """Under ZeRO-3, start DeepSpeed's communication before the model loads.

    transformers then builds the model inside `deepspeed.zero.Init`, which partitions every weight
    across the ranks as it is created (a 7B model never exists whole in one process). zero.Init
    needs DeepSpeed's process group for that; without it each rank partitions for a world of one
    and DeepSpeed's batch-size check fails at the first step. On a CPU host the group is gloo
    (DeepSpeed's default for its CPU accelerator, oneCCL, is not installed). ZeRO-1/2 and FSDP
    need nothing here: the Trainer sets them up when it wraps the loaded model.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if training_args.use_cpu else "nccl")


def freeze_never_used(model) -> None:
    """Parameters the forward never uses get no gradient; trainable, they stop DDP (see modeling.py)."""
    never_used = set(model.unused_parameter_names())
    for name, param in model.named_parameters():
        if name in never_used:
            param.requires_grad_(False)


def train(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = worker_arguments(argv)
    model_args, data_args, training_args = arguments.as_tuple()
    move_secrets_to_env(training_args)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device = "cpu" if training_args.use_cpu else "auto"
    machine = preflight(arguments, device, local_world, world_size=training_args.world_size)
    apply_machine_plan(training_args, machine)
    if secrets_in_environment() and training_args.process_index == 0:
        logger.info("secrets from the environment: %s", ", ".join(secrets_in_environment()))
    if training_args.verbose_logging and training_args.process_index == 0:
        logger.info("resolved arguments: %s", json.dumps(as_data(arguments), default=str))
    _report_to(training_args)
    transformers.set_seed(training_args.seed)

    # Data first: bad annotations must fail before minutes of weight loading. Then the model:
    # the tower it carries defines the image preprocessing the dataset needs.
    index = load_or_build_index(data_args, training_args)
    init_zero3_communication(training_args)
    model = load_model(model_args, data_args, training_args)
    # Published order: k-bit preparation, input gradients, LoRA wrapper, then the freezing flags
    # (which decide whether the LoRA layers train); they act on the model under the wrapper.
    model = add_training_options(model, training_args)
    counts = apply_freezing(unwrap(model), trainable_parts(model_args, training_args))
    freeze_never_used(unwrap(model))
    restore_training_dtypes(unwrap(model), training_args)
    logger.info(
        "world size %d; parameters: total %d, trainable %d",
        training_args.world_size,
        counts["total"],
        counts["trainable"],
    )
    tokenizer, token_spec = load_prepared_tokenizer(model_args)
    image_processor = build_image_processor(model.get_vision_tower().config)
    data_module = make_supervised_data_module(
        index, tokenizer, token_spec, image_processor, data_args, training_args
    )

    trainer = StreamVLNTrainer(
        model=model, args=training_args, processing_class=tokenizer, callbacks=_callbacks(), **data_module
    )
    # The newest complete checkpoint-N; checkpoints a fault interrupted are discarded (trainer.py).
    last = resume_checkpoint(training_args.output_dir, owner=training_args.should_save)
    if last:
        logger.info("resuming from %s", last)
    # Dataloader workers fork from here: frozen objects are never traversed by a worker's garbage
    # collector, which would otherwise touch (and so copy) ~120 MiB of this process's pages each.
    gc.freeze()
    trainer.train(resume_from_checkpoint=last)
    save_trained_model(trainer, tokenizer, image_processor, training_args.output_dir)
    shut_down_process_group()


def main() -> None:
    argv = sys.argv[1:]
    # Training logs go to stdout, which the flow streams; with --print_arguments stdout is the JSON.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr if PRINT_FLAG in argv else sys.stdout,
    )
    try:
        if PRINT_FLAG in argv:
            print_arguments([a for a in argv if a != PRINT_FLAG])
        else:
            train(argv)
    except InputError as err:  # bad flags or data: the problems, not a traceback per rank
        sys.stderr.write(f"streamvln worker: error: {err}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
