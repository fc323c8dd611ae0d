"""Training-step cost: labelled-positions loss (ours) vs the stock full-vocabulary projection.

Both paths run in one process on the same tiny-preset model (real 151,936-row vocabulary) and
the same real navigation batch; the script prints the time ratio and checks the losses agree.

    .venv/bin/python bench/loss_path.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

from streamvln_model import StreamVLNForCausalLM
from streamvln_model.data.datasets.collator import DataCollatorForNavigation
from streamvln_model.data.datasets.navigation import VLNActionDataset
from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.index.tables import build_index
from streamvln_model.model.conversation import prepare_tokenizer
from streamvln_model.model.tokenizer import load_tokenizer
from streamvln_model.model.vision import build_image_processor, resolve_vision_config
from streamvln_model.synthetic import write_trajectories
from streamvln_model.synthetic.checkpoint import preset_config


def batch_of_two(root: Path) -> dict:
    write_trajectories(root / "data", episodes=2, min_steps=66, max_steps=70, seed=0)
    tokenizer = load_tokenizer()
    spec = prepare_tokenizer(tokenizer)
    index, _ = build_index(load_episodes(str(root / "data")), 32, 8, 4)
    processor = build_image_processor(resolve_vision_config(preset_config("tiny")))
    dataset = VLNActionDataset(index, tokenizer, spec, processor)
    return DataCollatorForNavigation(tokenizer.pad_token_id, 4096)([dataset[1], dataset[2]])


def step(model, batch: dict, full_logits: bool) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    if full_logits:  # the stock path: logits for every position, then cross-entropy
        embeds, mask, positions, labels = model.prepare_multimodal_inputs(
            batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"]
        )
        loss = Qwen2ForCausalLM.forward(
            model, inputs_embeds=embeds, attention_mask=mask, position_ids=positions, labels=labels
        ).loss
    else:
        loss = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "images")}).loss
    loss.backward()
    step.last_loss = float(loss.detach())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = StreamVLNForCausalLM(preset_config("tiny")).train()
    with tempfile.TemporaryDirectory() as tmp:
        batch = batch_of_two(Path(tmp))
    timings = {}
    for full in (False, True, False, True):  # interleaved, first pass of each discarded as warm-up
        times = [step(model, batch, full) for _ in range(args.repeats)]
        timings.setdefault(full, []).append((sorted(times)[len(times) // 2], step.last_loss))
    ours, stock = timings[False][-1], timings[True][-1]
    tokens = int(batch["attention_mask"].sum())
    print(f"batch: 2 samples, {tokens} text tokens + visual tokens, torch threads {torch.get_num_threads()}")
    print(f"labelled-positions loss: {ours[0] * 1000:.1f} ms/step (loss {ours[1]:.5f})")
    print(f"full-vocabulary logits:  {stock[0] * 1000:.1f} ms/step (loss {stock[1]:.5f})")
    print(f"speed-up: {stock[0] / ours[0]:.2f}x; loss difference {abs(ours[1] - stock[1]):.2e}")


if __name__ == "__main__":
    main()
