"""One preflight for every launch path: the flow's stages, the standalone worker, `--plan-only`.

It answers "can this run train here?" before any weight is loaded or process started, and lists
every problem at once, each naming the flag, file or tensor and the fix:

* arguments: refused flags (field_status.py), values that cannot train (batch size 0, a negative
  or NaN learning rate, zero steps, ...), data sampling settings, paths that do not exist;
* the machine: the launch device and process count, precision and attention kernels it supports
  (a published default it cannot honour, such as flash_attention_2 on a CPU, is substituted and
  the substitution reported once), optional packages a flag needs;
* the checkpoint: every weight the config expects, by name and shape, from safetensors headers;
* the tokenizer: the chat template and masking probe.

Data problems come from the data stage (`data.annotations.load_episodes`), which reads the data.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streamvln_model.config.arguments import Arguments
from streamvln_model.config.errors import FlagError, InputError
from streamvln_model.config.field_status import field_problems
from streamvln_model.config.strategies import combination_problems, strategy_problems
from streamvln_model.data.datasets.sampling import validate_sampling
from streamvln_model.data.validation.errors import DataValidationError
from streamvln_model.model.quantization import bitsandbytes_missing

Device = Literal["auto", "cpu", "cuda"]


class PreflightError(InputError):
    """Every reason a run cannot start (flags, machine, checkpoint, data settings), collected
    before anything expensive."""

    def __str__(self) -> str:
        return f"{len(self.problems)} problem(s) before launch:\n  " + "\n  ".join(self.problems)


@dataclass
class MachinePlan:
    """What the launch machine changes: flags the workers get, substitutions to log once."""

    device: str
    worker_flags: dict[str, object] = field(default_factory=dict)
    substitutions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _finite_non_negative(name: str, value: float | None, problems: list[str]) -> None:
    if value is not None and (not math.isfinite(value) or value < 0):
        problems.append(f"--{name}={value}: must be a finite number >= 0")


def argument_problems(arguments: Arguments) -> list[str]:
    """Everything knowable from the flags and the paths they name (fast: reads no weights)."""
    model, data, training = arguments.as_tuple()
    problems = field_problems(arguments)
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(training, name) < 1:
            problems.append(f"--{name}={getattr(training, name)}: must be >= 1")
    for name, strategy in (("logging_steps", "logging_strategy"), ("save_steps", "save_strategy")):
        if getattr(training, strategy) == "steps" and getattr(training, name) <= 0:
            problems.append(f"--{name}={getattr(training, name)}: must be > 0 with {strategy}=steps")
    _finite_non_negative("learning_rate", training.learning_rate, problems)
    _finite_non_negative("mm_projector_lr", training.mm_projector_lr, problems)
    _finite_non_negative("mm_vision_tower_lr", training.mm_vision_tower_lr, problems)
    _finite_non_negative("weight_decay", training.weight_decay, problems)
    gpu_memory = getattr(training, "gpu_memory_gb", None)
    if gpu_memory is not None and not (math.isfinite(gpu_memory) and gpu_memory > 0):
        problems.append(f"--gpu_memory_gb={gpu_memory}: must be a GiB count > 0 (e.g. 80), or unset")
    if training.max_steps == 0:
        problems.append("--max_steps=0: trains nothing. Fix: leave it unset (-1) or give a positive count")
    elif training.max_steps < 0 and not training.num_train_epochs > 0:
        problems.append(
            f"--num_train_epochs={training.num_train_epochs} with --max_steps unset: trains nothing. "
            "Fix: a positive number of epochs, or --max_steps N"
        )
    if training.warmup_ratio is not None and not 0 <= training.warmup_ratio < 1:
        problems.append(f"--warmup_ratio={training.warmup_ratio}: must be in [0, 1)")
    try:
        validate_sampling(data.num_frames, data.num_history, data.num_future_steps)
    except DataValidationError as err:
        problems += err.problems
    problems += _tunable_parts_problems(model.mm_tunable_parts)
    problems += _training_option_problems(arguments)
    problems += _path_problems(arguments)
    return problems


def _training_option_problems(arguments: Arguments) -> list[str]:
    from streamvln_model.model.lora import training_option_problems

    return training_option_problems(arguments)


def _tunable_parts_problems(value: str | None) -> list[str]:
    from streamvln_model.model.freezing import parse_tunable_parts

    try:
        parse_tunable_parts(value)
    except ValueError as err:
        return [str(err)]
    return []


def _path_problems(arguments: Arguments) -> list[str]:
    from streamvln_model.model.builder import tokenizer_path

    model, data, training = arguments.as_tuple()
    problems = []
    checkpoint = Path(model.model_name_or_path or "")
    if not (checkpoint / "config.json").is_file():
        problems.append(
            f"--model_name_or_path {model.model_name_or_path}: no config.json there. Fix: a local checkpoint "
            "folder in the LLaVA-Video/StreamVLN layout (`streamvln synth checkpoint OUT` makes a tiny one)"
        )
    elif not (Path(tokenizer_path(model)) / "tokenizer_config.json").is_file():
        problems.append(
            f"tokenizer folder {tokenizer_path(model)}: no tokenizer_config.json. "
            "Fix: pass --tokenizer_name_or_path"
        )
    if not data.video_folder and not data.data_index:
        problems.append("--video_folder: missing. Fix: comma-separated trajectory source folders")
    problems += strategy_problems(training)
    return problems


def machine_plan(arguments: Arguments, device: Device = "auto", nproc_per_node: int = 1) -> MachinePlan:
    """The launch machine's answer to the flags: device flags, substitutions, impossibilities."""
    import torch

    training = arguments.training
    cuda = torch.cuda.is_available()
    resolved = ("cuda" if cuda else "cpu") if device == "auto" else device
    plan = MachinePlan(device=resolved)
    if resolved == "cuda":
        if not cuda:
            plan.problems.append(
                "device cuda: this host has no CUDA device. Fix: run on a GPU host, or device cpu / auto"
            )
        elif nproc_per_node > torch.cuda.device_count():
            plan.problems.append(
                f"nproc_per_node={nproc_per_node}: this host has {torch.cuda.device_count()} CUDA device(s). "
                "Fix: at most one process per GPU"
            )
    else:
        # On a CPU host torchrun needs both, else each process trains alone at world size 1.
        plan.worker_flags.update(use_cpu=True, ddp_backend="gloo")
    plan.problems += _precision_problems(training, resolved)
    if training.tf32 and not (resolved == "cuda" and cuda and _tf32_available()):
        plan.substitutions.append("--tf32 True: no Ampere-or-newer CUDA device here; TF32 stays off")
        plan.worker_flags["tf32"] = False
    if training.attn_implementation == "flash_attention_2" and not (
        resolved == "cuda" and importlib.util.find_spec("flash_attn") is not None
    ):
        why = "flash-attn is not installed" if resolved == "cuda" else f"device {resolved}"
        if "attn_implementation" in arguments.given:  # asked for, not the published default
            plan.problems.append(
                f"--attn_implementation flash_attention_2 needs flash-attn on CUDA ({why}). "
                "Fix: --attn_implementation sdpa (or eager), or install flash-attn on a CUDA host"
            )
        else:
            plan.substitutions.append(
                f"--attn_implementation flash_attention_2 needs flash-attn on CUDA ({why}): sdpa"
            )
            plan.worker_flags["attn_implementation"] = "sdpa"
    optim = str(getattr(training.optim, "value", training.optim))
    if ("bnb" in optim or "8bit" in optim) and bitsandbytes_missing():
        plan.problems.append(
            f"--optim {optim}: needs the bitsandbytes package, which is not installed. "
            "Fix: pip install bitsandbytes, or --optim adamw_torch"
        )
    plan.problems += _package_problems(training)
    plan.problems += combination_problems(training)  # --deepspeed with --fsdp, or without its package
    return plan


def _package_problems(training) -> list[str]:
    from streamvln_model.model.lora import machine_problems

    return machine_problems(training)  # --bits 4|8: bitsandbytes, a strategy that can hold it


def _tf32_available() -> bool:
    from transformers.utils import is_torch_tf32_available

    return is_torch_tf32_available()


def _precision_problems(training, device: str) -> list[str]:
    from streamvln_model.model.precision import precision_problems

    return precision_problems(training, device)


def checkpoint_report(arguments: Arguments) -> tuple[list[str], list[str]]:
    """(problems, unexpected weight names) for the checkpoint, from its config and headers only."""
    from streamvln_model.checkpoint.headers import checkpoint_problems
    from streamvln_model.model.builder import meta_model, model_config
    from streamvln_model.model.freezing import freezing_plan, no_trainable_problem
    from streamvln_model.model.lora import planned_model
    from streamvln_model.model.vision import vision_select_problems

    try:
        config = model_config(*arguments.as_tuple())
        problems = vision_select_problems(config)
        if problems:  # the model cannot be built with them; say why instead
            return problems, []
        model = meta_model(config)
    except (OSError, ValueError, TypeError, KeyError) as err:
        return [f"{arguments.model.model_name_or_path}/config.json: cannot build the model ({err})"], []
    # With --lora_enable the LoRA layers are among the names the freezing flags decide on.
    names = planned_model(meta_model(config), arguments.training) if arguments.training.lora_enable else model
    nothing_trains = no_trainable_problem(names, freezing_plan(arguments.model, arguments.training))
    if nothing_trains:
        problems.append(nothing_trains)
    try:
        weight_problems, unexpected = checkpoint_problems(arguments.model.model_name_or_path, model)
    except FlagError as err:
        return problems + err.problems, []
    return problems + weight_problems, unexpected


def tokenizer_problems(arguments: Arguments) -> list[str]:
    """Load the run's tokenizer and tokenise a probe turn exactly as the dataset will."""
    from streamvln_model.model.builder import load_prepared_tokenizer, tokenizer_path
    from streamvln_model.model.conversation import tokenize_conversation
    from streamvln_model.registry.scores import action_token_ids

    try:
        tokenizer, spec = load_prepared_tokenizer(arguments.model)
        action_token_ids(tokenizer)
        probe = [{"from": "human", "value": "<image>."}, {"from": "gpt", "value": "↑STOP"}]
        tokenize_conversation(tokenizer, spec, probe)
    except (OSError, ValueError, KeyError) as err:
        return [f"{tokenizer_path(arguments.model)}: tokenizer unusable for navigation ({err})"]
    return []


def preflight(
    arguments: Arguments,
    device: Device = "auto",
    nproc_per_node: int = 1,
    world_size: int | None = None,
    deepspeed: str | dict | None = None,
) -> MachinePlan:
    """Run every check; raise PreflightError listing all problems, else return the machine plan.

    Checks that need a readable checkpoint or a usable template are skipped when the arguments
    already say why they cannot pass (one clear problem instead of echoes of it). `world_size`
    (default: `nproc_per_node`) and `deepspeed` (a launch's config beside the flags) size the
    `--gpu_memory_gb` memory check, which runs only on an otherwise sound run.
    """
    from streamvln_model.model.builder import tokenizer_path
    from streamvln_model.model.conversation import SUPPORTED_VERSIONS

    problems = argument_problems(arguments)
    plan = machine_plan(arguments, device, nproc_per_node)
    problems += plan.problems
    model = arguments.model
    if (Path(model.model_name_or_path or "") / "config.json").is_file():
        problems += checkpoint_report(arguments)[0]
        tokenizer_there = (Path(tokenizer_path(model)) / "tokenizer_config.json").is_file()
        if tokenizer_there and model.version in SUPPORTED_VERSIONS:
            problems += tokenizer_problems(arguments)
        if not problems:
            problems += _memory_problems(arguments, world_size or nproc_per_node, deepspeed)
    if problems:
        raise PreflightError(problems)
    return plan


def _memory_problems(arguments: Arguments, world_size: int, deepspeed: str | dict | None) -> list[str]:
    from streamvln_model.training.memory import memory_problems

    return memory_problems(arguments, world_size, deepspeed)
