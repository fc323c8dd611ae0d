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

docs/DISTRIBUTED.md lists the combinations and what each one does.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

FULL_STATE_DICT = "FULL_STATE_DICT"
# The Trainer's flag of a ZeRO-3 model save, and DeepSpeed's newer name for it.
GATHER_ON_SAVE = ("stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save")


def read_deepspeed_config(config: str | dict | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the parsed config, None) or (None, why it cannot be read). A dict is taken as it is."""
    if config is None or isinstance(config, dict):
        return config, None
    try:
        parsed = json.loads(Path(config).read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"--deepspeed {config}: unreadable DeepSpeed config ({err}). Fix: a JSON file"
    if not isinstance(parsed, dict):
        kind = type(parsed).__name__
        return None, f"--deepspeed {config}: a DeepSpeed config is a JSON object, this file holds a {kind}"
    return parsed, None


def zero_stage(config: dict[str, Any] | None) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it names none)."""
    stage = ((config or {}).get("zero_optimization") or {}).get("stage", 0)
    try:
        return int(stage)
    except (TypeError, ValueError):
        return 0


def deepspeed_config_problems(training) -> list[str]:
    """Problems of `--deepspeed` that the config itself shows (unreadable, no full save under
    ZeRO-3, an optimizer section that would drop the per-module learning rates)."""
    if not training.deepspeed:
        return []
    name = training.deepspeed if isinstance(training.deepspeed, str) else "(inline config)"
    config, unreadable = read_deepspeed_config(training.deepspeed)
    if unreadable:
        return [unreadable]
    problems = []
    zero = config.get("zero_optimization") or {}
    if zero_stage(config) == 3 and not any(zero.get(key) is True for key in GATHER_ON_SAVE):
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
    if "optimizer" in config and per_module:
        problems.append(
            f'--deepspeed {name} has an "optimizer" section: DeepSpeed would build it over all trainable '
            f"weights at one learning rate, ignoring {' and '.join(per_module)}. Fix: remove the section "
            "(the Trainer's optimizer keeps the per-module learning rates) or drop those flags"
        )
    return problems


def fsdp_problems(training) -> list[str]:
    """Problems of `--fsdp` that its config shows: a final save needs the full state dict."""
    if not training.fsdp:
        return []
    state_dict_type = str((training.fsdp_config or {}).get("state_dict_type", FULL_STATE_DICT))
    if FULL_STATE_DICT not in state_dict_type:
        return [
            f"--fsdp_config state_dict_type={state_dict_type}: the final save would write no model weights "
            f"(transformers saves a model folder only from a {FULL_STATE_DICT}). Fix: "
            f'"state_dict_type": "{FULL_STATE_DICT}" (configs/fsdp.json)'
        ]
    return []


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
    """How this run shards, in words for logs: "DeepSpeed ZeRO-3 (offload: optimizer, parameters)",
    "FSDP2", "DDP"."""
    if training.deepspeed:
        config, _ = read_deepspeed_config(training.deepspeed)
        zero = (config or {}).get("zero_optimization") or {}
        offload = [
            part
            for part, key in (("optimizer", "offload_optimizer"), ("parameters", "offload_param"))
            if (zero.get(key) or {}).get("device", "none") not in ("none", None)
        ]
        suffix = f" (offload: {', '.join(offload)})" if offload else ""
        return f"DeepSpeed ZeRO-{zero_stage(config)}{suffix}"
    if training.fsdp:
        return f"FSDP{(training.fsdp_config or {}).get('version', 2)}"
    return "DDP"


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
