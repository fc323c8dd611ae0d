"""Measure what one real training step keeps per rank: parameter, gradient and optimizer-state bytes.

Run by tests/test_memory_plan.py, as a plain process (DDP at world size 1: the HF Trainer with
the optimizer it builds) or under `torchrun --nproc_per_node 2` with `--deepspeed` (ZeRO-2 over
gloo on CPU). The model is the tiny preset at random init, frozen as the worker freezes it; the
data is a synthetic trajectory folder. Each rank writes `<out>/rank<R>.json`:

* `parameter_bytes`: the bytes of every parameter tensor this rank holds;
* `gradient_bytes`: gradients right before the optimizer step (DDP: `param.grad`; ZeRO-2: the
  rank's averaged gradient partition, DeepSpeed's `averaged_gradients`);
* `optimizer_bytes`: after the step, the optimizer's state tensors (ZeRO-2: also the fp32 master
  partition `single_partition_of_fp32_groups`, which DeepSpeed holds besides the bf16 weights).

    python tests/memory_probe.py --data DIR --out DIR [--bf16] [--deepspeed CONFIG]
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


class MemoryCapture(TrainerCallback):
    """Sums tensor bytes around the (only) optimizer step, before the Trainer's zero_grad."""

    def __init__(self):
        self.trainer = None
        self.result: dict[str, int] = {}

    def _zero_optimizer(self):
        engine = getattr(self.trainer, "deepspeed", None)
        return engine.optimizer if engine is not None else None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._zero_optimizer() is None:
            grads = [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
            self.result["gradient_bytes"] = tensor_bytes(grads)

    def watch_zero_step(self) -> None:
        """accelerate steps the DeepSpeed engine inside `backward`, before the Trainer's callbacks:
        the gradient partition is measured as DeepSpeed's own step begins."""
        from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

        original = DeepSpeedZeroOptimizer.step
        result = self.result

        def step(zero, *args, **kwargs):
            grads = [g for group in zero.averaged_gradients.values() for g in (group or [])]
            result["gradient_bytes"] = tensor_bytes(grads)
            return original(zero, *args, **kwargs)

        DeepSpeedZeroOptimizer.step = step

    def on_optimizer_step(self, args, state, control, **kwargs):
        zero = self._zero_optimizer()
        inner = zero.optimizer if zero is not None else self.trainer.optimizer
        inner = getattr(inner, "optimizer", inner)  # accelerate's AcceleratedOptimizer wrapper
        states = [t for values in inner.state.values() for t in values.values()]
        masters = list(zero.single_partition_of_fp32_groups) if zero is not None else []
        self.result["optimizer_bytes"] = tensor_bytes(states) + tensor_bytes(masters)
        self.result["optimizer_state_dtypes"] = sorted({str(t.dtype) for t in states if t.dim() > 0})
        self.result["parameter_bytes"] = tensor_bytes(self.trainer.model.parameters())
        self.result["trainable_parameters"] = sum(
            p.numel() for p in self.trainer.model.parameters() if p.requires_grad
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--deepspeed", default=None)
    args = parser.parse_args()

    from streamvln_model.config.arguments import TrainingArguments
    from streamvln_model.config.sample_shape import SampleShape
    from streamvln_model.config.strategies import shut_down_process_group
    from streamvln_model.data.datasets.collator import DataCollatorForNavigation
    from streamvln_model.data.datasets.navigation import VLNActionDataset
    from streamvln_model.data.formats.annotations import load_episodes
    from streamvln_model.data.index.tables import build_index
    from streamvln_model.model.conversation import prepare_tokenizer
    from streamvln_model.model.freezing import FreezingPlan, apply_freezing
    from streamvln_model.model.modeling import StreamVLNForCausalLM
    from streamvln_model.model.tokenizer import load_tokenizer
    from streamvln_model.model.vision import build_image_processor, resolve_vision_config
    from streamvln_model.synthetic.checkpoint import preset_config
    from streamvln_model.training.trainer import StreamVLNTrainer
    from streamvln_model.training.worker import freeze_never_used

    world = int(os.environ.get("WORLD_SIZE", "1"))
    training_args = TrainingArguments(
        output_dir=str(Path(args.out) / "trainer"),
        use_cpu=True,
        ddp_backend="gloo" if world > 1 else None,
        deepspeed=args.deepspeed,
        bf16=args.bf16,
        report_to=["none"],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=1,
        max_steps=1,
        learning_rate=1e-4,
        seed=0,
        gradient_checkpointing=False,
        attn_implementation="sdpa",
        dataloader_num_workers=0,
    )
    config = preset_config("tiny")
    torch.manual_seed(0)
    model = StreamVLNForCausalLM(config).to(torch.bfloat16 if args.bf16 else torch.float32)
    apply_freezing(
        model, FreezingPlan(tunable_parts=("mm_vision_tower", "mm_mlp_adapter", "mm_language_model"))
    )
    freeze_never_used(model)
    tokenizer = load_tokenizer()
    spec = prepare_tokenizer(tokenizer)
    index, _ = build_index(load_episodes(args.data), 32, 8, 4)
    dataset = VLNActionDataset(
        index, tokenizer, spec, build_image_processor(resolve_vision_config(config)), SampleShape(32, 8, 4)
    )
    capture = MemoryCapture()
    if args.deepspeed:
        capture.watch_zero_step()
    trainer = StreamVLNTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorForNavigation(tokenizer.pad_token_id, 4096),
        processing_class=tokenizer,
        callbacks=[capture],
    )
    capture.trainer = trainer
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({**capture.result, "world_size": world}))
    shut_down_process_group()


if __name__ == "__main__":
    main()
