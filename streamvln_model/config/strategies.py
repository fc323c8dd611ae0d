"""Sharding strategies: plain DDP, DeepSpeed ZeRO-2 / ZeRO-3 (+ CPU offload), or FSDP.

One run uses at most one of DeepSpeed (`--deepspeed CONFIG.json`) and FSDP (`--fsdp`, with
`--fsdp_config`): the transformers Trainer refuses the pair only after the weights have loaded,
and both only make sense for one purpose. The checks here say before launch what would
otherwise fail late or, worse, train differently from what was asked:

* a ZeRO-3 config without `stage3_gather_16bit_weights_on_model_save`: the Trainer then saves a
  DeepSpeed checkpoint instead of a model folder, and the run's final model cannot be loaded;
* a DeepSpeed config with its own `optimizer` section while `--mm_projector_lr` or
  `--mm_vision_tower_lr` is set: DeepSpeed builds that optimizer over all trainable weights at
  one learning rate, silently dropping the published per-module learning rates;
* FSDP with a sharded state dict: the final save writes no model weights.

`read_strategy` is the one reader of these configs: preflight, the memory plan and the logs all ask
it, so a bad ZeRO stage gets one answer everywhere. docs/DISTRIBUTED.md lists the combinations and
what each one does.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamvln_model.config.errors import InputError

FULL_STATE_DICT = "FULL_STATE_DICT"
# The Trainer's flag of a ZeRO-3 model save, and DeepSpeed's newer name for it.
GATHER_ON_SAVE = ("stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save")
ZERO_STAGES = (0, 1, 2, 3)

Kind = Literal["ddp", "zero0", "zero1", "zero2", "zero3", "fsdp"]


class StrategyError(InputError):
    """The DeepSpeed/FSDP config cannot say how the run shards (unreadable, a bad ZeRO stage)."""


@dataclass(frozen=True)
class ShardingStrategy:
    """How a run shards, read once from `--deepspeed` (a path or a dict), `--fsdp` and `--fsdp_config`.

    `kind` is "ddp", "zero0".."zero3" (DeepSpeed at that ZeRO stage) or "fsdp". `problems` are
    what the configs themselves make impossible to read (an unreadable file, a ZeRO stage that
    does not exist); the fields then keep their defaults and must not be trusted.
    """

    kind: Kind = "ddp"
    stage: int = 0  # ZeRO stage; 0 outside DeepSpeed
    source: str = ""  # the DeepSpeed config as messages name it: its path or "(inline config)"
    config: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # parsed DeepSpeed JSON
    problems: tuple[str, ...] = ()
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = False
    # DeepSpeed sizes in elements: a count, "auto" (the HF integration fills it in), or None (absent).
    reduce_bucket: int | str | None = None
    prefetch_bucket: int | str | None = None
    sub_group_size: int | str | None = None
    gather_on_save: bool = False  # ZeRO-3 writes a loadable model folder on save
    optimizer_section: bool = False  # the DeepSpeed config builds its own optimizer
    fsdp_version: int = 2
    fsdp_state_dict_type: str = FULL_STATE_DICT
    fsdp_reshard_after_forward: bool = True  # full shard (False: shard-grad-op)
    fsdp_activation_checkpointing: bool = False

    @property
    def deepspeed(self) -> bool:
        return self.kind.startswith("zero")

    @property
    def name(self) -> str:
        """In words for logs: "DeepSpeed ZeRO-3 (offload: optimizer, parameters)", "FSDP2", "DDP"."""
        if self.deepspeed:
            offload = [
                part
                for part, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_params))
                if on
            ]
            suffix = f" (offload: {', '.join(offload)})" if offload else ""
            return f"DeepSpeed ZeRO-{self.stage}{suffix}"
        if self.kind == "fsdp":
            return f"FSDP{self.fsdp_version}"
        return "DDP"

    def check(self) -> ShardingStrategy:
        """The strategy itself, or StrategyError with the problems that make it unreadable."""
        if self.problems:
            raise StrategyError(list(self.problems))
        return self


def _read_json(path: str, flag: str, what: str) -> tuple[Any, str | None]:
    try:
        return json.loads(Path(path).read_text()), None
    except (OSError, json.JSONDecodeError) as err:
        return None, f"--{flag} {path}: unreadable {what} ({err}). Fix: a JSON file"


def _offloaded(section: Any) -> bool:
    return isinstance(section, dict) and str(section.get("device", "none")).lower() not in ("none", "")


def _stage(value: Any, source: str) -> tuple[int, str | None]:
    """The ZeRO stage, or 0 and the one problem every reader of a bad stage reports."""
    if isinstance(value, int) and not isinstance(value, bool) and value in ZERO_STAGES:
        return value, None
    return 0, (
        f"--deepspeed {source}: zero_optimization.stage is {value!r}, DeepSpeed's ZeRO stages are "
        "0, 1, 2 and 3. Fix: 2 (configs/deepspeed/zero2.json) or 3 (configs/deepspeed/zero3.json)"
    )


def _deepspeed(config: Any, source: str) -> dict[str, Any]:
    """The DeepSpeed fields of ShardingStrategy from a parsed config (with `problems`)."""
    if not isinstance(config, dict):
        kind = type(config).__name__
        return {"problems": (f"--deepspeed {source}: a DeepSpeed config is a JSON object, not a {kind}",)}
    zero = config.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        zero = {}
    stage, bad_stage = _stage(zero.get("stage", 0), source)
    return {
        "kind": f"zero{stage}",
        "stage": stage,
        "source": source,
        "config": config,
        "offload_optimizer": _offloaded(zero.get("offload_optimizer")),
        "offload_params": _offloaded(zero.get("offload_param")),
        "overlap_comm": bool(zero.get("overlap_comm", False)),
        "reduce_bucket": zero.get("reduce_bucket_size"),
        "prefetch_bucket": zero.get("stage3_prefetch_bucket_size"),
        "sub_group_size": zero.get("sub_group_size"),
        "gather_on_save": any(zero.get(key) is True for key in GATHER_ON_SAVE),
        "optimizer_section": "optimizer" in config,
        "problems": (bad_stage,) if bad_stage else (),
    }


def _fsdp(fsdp: Any, fsdp_config: Any) -> dict[str, Any]:
    """The FSDP fields of ShardingStrategy. transformers 5 turns `--fsdp "full_shard offload"` into
    `fsdp=True` + `fsdp_config` entries while parsing; both forms are read."""
    problems: tuple[str, ...] = ()
    config = fsdp_config or {}
    if isinstance(config, str):
        config, unreadable = _read_json(config, "fsdp_config", "FSDP config")
        problems = (unreadable,) if unreadable else ()
    config = {k.removeprefix("fsdp_"): v for k, v in config.items()} if isinstance(config, dict) else {}
    items = fsdp.split() if isinstance(fsdp, str) else list(fsdp) if isinstance(fsdp, list) else []
    items = [str(getattr(i, "value", i)) for i in items]  # FSDPOption members or their strings
    reshard = config.get("reshard_after_forward", "shard_grad_op" not in items)
    version = str(config.get("version", 2))
    return {
        "kind": "fsdp",
        "fsdp_version": int(version) if version.isdigit() else 2,
        "fsdp_reshard_after_forward": str(reshard).lower() not in ("false", "shard_grad_op", "no_shard"),
        "offload_params": str(config.get("cpu_offload", "offload" in items)).lower() == "true",
        "fsdp_state_dict_type": str(config.get("state_dict_type", FULL_STATE_DICT)),
        "fsdp_activation_checkpointing": str(config.get("activation_checkpointing", False)).lower() == "true",
        "problems": problems,
    }


def read_strategy(training, deepspeed: str | Path | dict | None = None) -> ShardingStrategy:
    """The run's sharding: `deepspeed` (a launch's config beside the flags) or `--deepspeed`, else
    `--fsdp` with `--fsdp_config`, else DDP. Never raises: what cannot be read is in `problems`."""
    deepspeed = deepspeed if deepspeed not in (None, "") else getattr(training, "deepspeed", None)
    if deepspeed:
        if isinstance(deepspeed, dict):
            return ShardingStrategy(**_deepspeed(deepspeed, "(inline config)"))
        config, unreadable = _read_json(str(deepspeed), "deepspeed", "DeepSpeed config")
        if unreadable:
            return ShardingStrategy(source=str(deepspeed), problems=(unreadable,))
        return ShardingStrategy(**_deepspeed(config, str(deepspeed)))
    if getattr(training, "fsdp", None):
        return ShardingStrategy(**_fsdp(training.fsdp, getattr(training, "fsdp_config", None)))
    return ShardingStrategy()


def strategy_problems(training, deepspeed: str | Path | dict | None = None) -> list[str]:
    """Problems of `--deepspeed` / `--fsdp` that their configs show: unreadable, a bad ZeRO stage,
    no full save under ZeRO-3 or FSDP, an optimizer section that would drop the per-module
    learning rates."""
    strategy = read_strategy(training, deepspeed)
    if strategy.problems:
        return list(strategy.problems)
    problems = []
    name = strategy.source
    if strategy.kind == "zero3" and not strategy.gather_on_save:
        problems.append(
            f"--deepspeed {name}: ZeRO-3 without zero_optimization."
            "stage3_gather_16bit_weights_on_model_save: the final save would be a DeepSpeed checkpoint, "
            "not a model folder that loads. "
            'Fix: set "stage3_gather_16bit_weights_on_model_save": true (configs/deepspeed/zero3.json)'
        )
    per_module = [
        f"--{flag}"
        for flag in ("mm_projector_lr", "mm_vision_tower_lr")
        if getattr(training, flag, None) is not None
    ]
    if strategy.optimizer_section and per_module:
        problems.append(
            f'--deepspeed {name} has an "optimizer" section: DeepSpeed would build it over all trainable '
            f"weights at one learning rate, ignoring {' and '.join(per_module)}. Fix: remove the section "
            "(the Trainer's optimizer keeps the per-module learning rates) or drop those flags"
        )
    if strategy.kind == "fsdp" and FULL_STATE_DICT not in strategy.fsdp_state_dict_type:
        problems.append(
            f"--fsdp_config state_dict_type={strategy.fsdp_state_dict_type}: the final save would write no "
            f"model weights (transformers saves a model folder only from a {FULL_STATE_DICT}). Fix: "
            f'"state_dict_type": "{FULL_STATE_DICT}" (configs/fsdp.json)'
        )
    return problems


def combination_problems(training) -> list[str]:
    """DeepSpeed and FSDP together, or DeepSpeed without its package (a launch machine question)."""
    problems = []
    if training.deepspeed and training.fsdp:
        problems.append(
            "--deepspeed and --fsdp: both shard the model, and one run can use only one of them. "
            "Fix: drop --fsdp/--fsdp_config (DeepSpeed ZeRO) or --deepspeed (FSDP)"
        )
    if training.deepspeed and importlib.util.find_spec("deepspeed") is None:
        problems.append("--deepspeed: the deepspeed package is not installed. Fix: pip install deepspeed")
    return problems


def strategy_name(training) -> str:
    """How this run shards, in words for logs (ShardingStrategy.name)."""
    return read_strategy(training).name


def shut_down_process_group() -> None:
    """Wait for every rank, then close the process group, before a worker process exits.

    Ranks finish at different moments; a rank that exits while gloo's connection to a slower
    peer is still open makes that peer's gloo thread throw, and the peer aborts (SIGABRT) after
    it trained and saved correctly. A barrier and an explicit teardown end every rank cleanly.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
