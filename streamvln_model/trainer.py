"""`StreamVLNTrainer`: a transformers Trainer with per-module learning rates, plus callbacks."""

from __future__ import annotations

import json
import math
import os
import sys
import time

from transformers import Trainer, TrainerCallback

PROGRESS_PREFIX = "streamvln-progress "


class StreamVLNTrainer(Trainer):
    """Adds the published parameter groups: projector and vision tower may have their own lr.

    With `--loss_per_micro_batch` the loss is the published one (transformers 4.45): each
    micro-batch's mean, divided by the accumulation steps. By default transformers 5 hands the
    model the label-token count of the whole accumulated batch, so every label token weighs the
    same whatever micro-batch it sits in.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.loss_per_micro_batch:
            self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        args = self.args
        if self.optimizer is not None or (args.mm_projector_lr is None and args.mm_vision_tower_lr is None):
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, float | None], list] = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            lr = None
            if "mm_projector" in name and args.mm_projector_lr is not None:
                lr = args.mm_projector_lr
            elif "vision_tower" in name and args.mm_vision_tower_lr is not None:
                lr = args.mm_vision_tower_lr
            groups.setdefault((name in decay, lr), []).append(param)
        param_groups = []
        for (decays, lr), params in groups.items():
            group = {"params": params, "weight_decay": args.weight_decay if decays else 0.0}
            if lr is not None:
                group["lr"] = lr
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer


def _numeric(logs: dict) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)}


class ProgressCallback(TrainerCallback):
    """Rank 0 prints one JSON line per log so the flow can follow training from stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "world_size": args.world_size,
                **_numeric(logs),
            }
            sys.stdout.write(PROGRESS_PREFIX + json.dumps(record) + "\n")
            sys.stdout.flush()


class MlflowRunCallback(TrainerCallback):
    """Per-step metrics from rank 0 into the MLflow run the flow opened (`MLFLOW_RUN_ID`).

    The flow already logged the resolved arguments as params; this logs metrics only, so a
    value written twice can never conflict.
    """

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id or os.environ["MLFLOW_RUN_ID"]
        self._client = None

    def _log(self, metrics: dict[str, float], step: int) -> None:
        import mlflow

        if self._client is None:
            self._client = mlflow.MlflowClient()
        entries = [mlflow.entities.Metric(k, v, int(1000 * time.time()), step) for k, v in metrics.items()]
        if entries:
            self._client.log_batch(self.run_id, metrics=entries)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self._log(_numeric(logs), state.global_step)
