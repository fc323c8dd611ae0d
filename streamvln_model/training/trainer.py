"""`StreamVLNTrainer`: a transformers Trainer with per-module learning rates, plus callbacks.

Its checkpoint-N folders are written aside and renamed when complete by checkpoint/staging.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

from transformers import Trainer, TrainerCallback

from streamvln_model.checkpoint.staging import (
    load_non_lora_weights,
    publish_staged_checkpoint,
    save_non_lora_weights,
    staging_dir,
)
from streamvln_model.data.datasets.combined import CombinedDataset, GroupByTaskSampler, megabatch_size
from streamvln_model.model.lora import is_peft_model

PROGRESS_PREFIX = "streamvln-progress "
logger = logging.getLogger("streamvln.trainer")


class StreamVLNTrainer(Trainer):
    """Adds the published parameter groups: projector and vision tower may have their own lr.

    With `--loss_per_micro_batch` the loss is the published one (transformers 4.45): each
    micro-batch's mean, divided by the accumulation steps. By default transformers 5 hands the
    model the label-token count of the whole accumulated batch, so every label token weighs the
    same whatever micro-batch it sits in.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._staging = False  # True while the Trainer writes a checkpoint (see _save_checkpoint)
        if self.args.loss_per_micro_batch:
            self.model_accepts_loss_kwargs = False

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
            enable_fsdp_on_cpu(self)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return staging_dir(run_dir) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written aside and renamed to `checkpoint-N` when complete.

        transformers 5.24 writes straight into `checkpoint-N` (model by the saving rank, RNG state
        and DeepSpeed/FSDP shards by every rank), so a fault mid-save leaves a folder that
        `get_last_checkpoint` would pick and the resume would fail on. Here the Trainer's own save
        runs with its run folder pointed at the staging folder; after a barrier (every rank's part
        is on disk) the owning rank renames the folder and only then rotates `save_total_limit`
        (checkpoint/staging.py).
        """
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_staged_checkpoint(
                self._get_output_dir(trial),
                self.state.global_step,
                self.args.save_total_limit,
                self.state.best_model_checkpoint,
            )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """With LoRA, also the other trained weights (e.g. the projector) beside the adapter.

        peft saves only the adapter into checkpoint-N, so a run resumed from it would restart those
        weights from the base checkpoint (the published trainer does). Under DeepSpeed the resume
        reads DeepSpeed's own full checkpoint instead; with a consolidated `state_dict` (ZeRO-3,
        FSDP) the weights come from it.
        """
        super()._save(output_dir, state_dict)
        if self.args.should_save and is_peft_model(self.model):
            save_non_lora_weights(self.model, output_dir or self.args.output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if is_peft_model(self.model):
            load_non_lora_weights(self.model, resume_from_checkpoint)

    def _get_train_sampler(self, train_dataset=None):
        """`--group_by_task`: per-task megabatches, so no optimizer step mixes tasks (published).

        A megabatch is per-device batch x world size x accumulation steps: accelerate hands each
        rank consecutive batches of the sampler's stream, so one megabatch feeds exactly one
        optimizer step on every rank.
        """
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not (self.args.group_by_task and isinstance(dataset, CombinedDataset)):
            return super()._get_train_sampler(train_dataset)
        args = self.args
        size = megabatch_size(
            args.per_device_train_batch_size, args.world_size, args.gradient_accumulation_steps
        )
        sampler = GroupByTaskSampler(dataset.tasks, size, seed=args.seed)
        if any(sampler.dropped.values()):
            logger.warning(
                "group_by_task: megabatches of %d drop %s samples per epoch", size, sampler.dropped
            )
        return sampler

    def create_optimizer(self, model=None):
        """Published groups: weight decay except on biases and norms (transformers' rule: bias,
        LayerNorm modules, names with layernorm/rmsnorm/norm); the projector's and the tower's
        parameters (by name, also under a peft wrapper) at their own lr when one is set. Without
        either lr these are exactly the Trainer's default groups, as published."""
        args = self.args
        if self.optimizer is not None or (args.mm_projector_lr is None and args.mm_vision_tower_lr is None):
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        param_groups = parameter_groups(opt_model.named_parameters(), decay, args)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        if "bitsandbytes" in str(optimizer_cls) and optimizer_kwargs.get("optim_bits") == 8:
            _embeddings_in_32_bit(opt_model)  # what the Trainer's default path does for 8-bit Adam
        return self.optimizer


def module_lr(name: str, args) -> float | None:
    """The lr of parameter `name` when it differs from --learning_rate (published name matching)."""
    if "mm_projector" in name and args.mm_projector_lr is not None:
        return args.mm_projector_lr
    if "vision_tower" in name and args.mm_vision_tower_lr is not None:
        return args.mm_vision_tower_lr
    return None


def parameter_groups(named_parameters, decay: set[str], args) -> list[dict]:
    """Trainable parameters grouped by (decays, lr); groups without their own lr use the
    optimizer's default, --learning_rate."""
    groups: dict[tuple[bool, float | None], list] = {}
    for name, param in named_parameters:
        if param.requires_grad:
            groups.setdefault((name in decay, module_lr(name, args)), []).append(param)
    param_groups = []
    for (decays, lr), params in groups.items():
        group = {"params": params, "weight_decay": args.weight_decay if decays else 0.0}
        if lr is not None:
            group["lr"] = lr
        param_groups.append(group)
    return param_groups


def _embeddings_in_32_bit(model) -> None:
    import bitsandbytes
    from torch import nn

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


def enable_fsdp_on_cpu(trainer: Trainer) -> None:
    """Make `--fsdp` shard on a CPU host instead of silently training plain DDP.

    accelerate (1.15) hands its FSDP plugin to the run only on accelerator devices; on a CPU
    host with several processes it keeps MULTI_CPU, and the Trainer then wraps the model in DDP
    as if `--fsdp` had not been given. torch's `fully_shard` itself runs over gloo, so the plugin
    is installed the way accelerate installs it on a GPU host; the rest (wrapping by decoder
    layer, full-state-dict save) is then accelerate's and the Trainer's own FSDP path. Any other
    device type is left alone: there, a plugin accelerate ignored is not ours to force.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    # Every later `AcceleratorState()` copies the process state's type over its own; accelerate
    # keeps the two equal on GPU hosts the same way.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def _numeric(logs: dict) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)}


class ProgressCallback(TrainerCallback):
    """Rank 0 prints one JSON line per log so the flow can follow training from stdout.

    Besides the Trainer's logs (loss, learning_rate, epoch, ...) a record carries this attempt's
    throughput and the time left: `samples_per_second` and `eta_s`, measured from the step the
    attempt started at (a resumed attempt counts from its checkpoint, not from step 0).
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._start: tuple[float, int] | None = None  # (time, global step) when this attempt began

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = (self._clock(), state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "world_size": args.world_size,
                **_numeric(logs),
                **self._pace(args, state),
            }
            sys.stdout.write(PROGRESS_PREFIX + json.dumps(record) + "\n")
            sys.stdout.flush()

    def _pace(self, args, state) -> dict[str, float]:
        if self._start is None:
            return {}
        started, first_step = self._start
        steps, elapsed = state.global_step - first_step, self._clock() - started
        if steps <= 0 or elapsed <= 0:
            return {}
        samples_per_step = (state.train_batch_size or args.per_device_train_batch_size) * (
            args.gradient_accumulation_steps * args.world_size
        )
        seconds_per_step = elapsed / steps
        return {
            "samples_per_second": samples_per_step / seconds_per_step,
            "eta_s": max(state.max_steps - state.global_step, 0) * seconds_per_step,
        }


class MlflowRunCallback(TrainerCallback):
    """Per-step metrics from rank 0 into the MLflow run the flow opened (`MLFLOW_RUN_ID`).

    The flow already logged the resolved arguments as params; this logs metrics only. A retried
    training resumes from checkpoint-K while the failed attempt had logged up to some step M > K:
    MLflow cannot remove a logged point, so at train begin this reads, per metric, the last step
    the run holds and from then on logs a metric only at a later step. The run keeps one value per
    step (the first attempt's for K+1..M; a deterministic resume recomputes the same ones).
    """

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id or os.environ["MLFLOW_RUN_ID"]
        self._client = None
        self._logged: dict[str, int] = {}  # metric -> last step the run holds

    @property
    def client(self):
        import mlflow

        if self._client is None:
            self._client = mlflow.MlflowClient()
        return self._client

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._logged = logged_steps(self.client, self.run_id)
            if self._logged and state.global_step < max(self._logged.values()):
                logger.info(
                    "MLflow run %s already holds steps up to %d: logging each metric after its last step",
                    self.run_id,
                    max(self._logged.values()),
                )

    def _log(self, metrics: dict[str, float], step: int) -> None:
        import mlflow

        now = int(1000 * time.time())
        entries = [
            mlflow.entities.Metric(k, v, now, step)
            for k, v in metrics.items()
            if step > self._logged.get(k, -1)
        ]
        if entries:
            self.client.log_batch(self.run_id, metrics=entries)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self._log(_numeric(logs), state.global_step)


def logged_steps(client, run_id: str) -> dict[str, int]:
    """Metric name -> the highest step the MLflow run holds for it."""
    metrics = client.get_run(run_id).data.metrics
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in metrics}


class ShardingCallback(TrainerCallback):
    """Once the Trainer has wrapped the model: rank 0 logs how it is sharded, and a run that asked
    for FSDP but got an unsharded model stops (all ranks) instead of training as plain DDP.

    accelerate keeps its FSDP plugin only where it supports it (see `enable_fsdp_on_cpu`); a
    model with no FSDP unit after wrapping means the flags were dropped somewhere on the way.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

        from streamvln_model.config.strategies import strategy_name

        sharded = (FSDPModule, FullyShardedDataParallel)  # FSDP2 modules, FSDP1 wrappers
        units = sum(isinstance(m, sharded) for m in model.modules()) if model is not None else 0
        if args.fsdp and units == 0:
            raise RuntimeError(
                "--fsdp was given but the Trainer left the model unsharded (accelerate ignored the FSDP "
                f"plugin for distributed type {_distributed_type()}); refusing to train it as plain DDP"
            )
        if state.is_world_process_zero:
            detail = f", {units} sharded modules" if units else ""
            logging.getLogger("streamvln.train").info(
                "sharding: %s over %d rank(s)%s", strategy_name(args), args.world_size, detail
            )


def _distributed_type() -> str:
    from accelerate.state import PartialState

    return str(PartialState().distributed_type)
