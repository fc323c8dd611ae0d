"""The worker's reload check: after saving, rank 0 reloads the folder and compares logits on a small
probe with the trained model (`verify_saved_model`), so a broken save fails the training run
where the weights already are; the flow then only reads safetensors headers (headers.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamvln_model.checkpoint.layout import SavedModelError
from streamvln_model.checkpoint.loading import load_trained, save_format
from streamvln_model.model.constants import IMAGE_TOKEN_INDEX
from streamvln_model.model.modeling import StreamVLNForCausalLM

logger = logging.getLogger("streamvln.checkpoint")

# Largest logit difference, relative to the largest logit, accepted when the trained model ran on
# an accelerator and the reload on the CPU (different kernels). A missing or mismatched weight
# moves logits by about their own size, far above this.
CROSS_DEVICE_TOLERANCE = 5e-2


@dataclass(frozen=True)
class Probe:
    """A small multimodal input and the trained model's logits on it (both on the CPU)."""

    inputs: dict[str, Any]
    logits: torch.Tensor
    dtype: torch.dtype
    device_type: str
    attn_implementation: str | None


def probe_inputs(model: StreamVLNForCausalLM) -> dict[str, Any]:
    """Eight text tokens around one `<image>` placeholder and one random frame: touches the LLM, the
    tower and the projector at the cost of a single frame."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, min(model.config.vocab_size, 151643), (8,), generator=generator)
    input_ids = torch.cat([text[:4], torch.tensor([IMAGE_TOKEN_INDEX]), text[4:]]).unsqueeze(0)
    size = model.get_vision_tower().config.image_size
    frame = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "images": [frame]}


@torch.no_grad()
def probe_logits(model: StreamVLNForCausalLM, inputs: dict[str, Any]) -> torch.Tensor:
    """Logits of `model` on `inputs` in eval mode (restoring its mode), returned on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        output = model(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            images=[frame.to(device) for frame in inputs["images"]],
            use_cache=False,
        )
    finally:
        model.train(was_training)
    return output.logits.detach().float().cpu()


def probe_model(model: StreamVLNForCausalLM) -> Probe:
    parameter = next(model.parameters())
    inputs = probe_inputs(model)
    return Probe(
        inputs=inputs,
        logits=probe_logits(model, inputs),
        dtype=parameter.dtype,
        device_type=parameter.device.type,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
    )


def verify_saved_model(output_dir: str | Path, probe: Probe) -> None:
    """Reload `output_dir` on the CPU and require the probe's logits: equal when the trained model
    also ran on the CPU (same kernels), within `CROSS_DEVICE_TOLERANCE` otherwise."""
    same_kernels = probe.device_type == "cpu"
    options: dict[str, Any] = {"dtype": probe.dtype}
    if same_kernels and probe.attn_implementation:
        options["attn_implementation"] = probe.attn_implementation
    try:
        reloaded = load_trained(output_dir, **options)  # full, LoRA (base + adapter) or projector-only
    except Exception as err:
        raise SavedModelError(f"{output_dir}: the saved model does not load again: {err}") from err
    logits = probe_logits(reloaded, probe.inputs)
    del reloaded
    if logits.shape != probe.logits.shape:
        raise SavedModelError(
            f"{output_dir}: the reloaded model gives logits of shape {list(logits.shape)}, the trained "
            f"model {list(probe.logits.shape)}: the saved config builds a different model"
        )
    difference = float((logits - probe.logits).abs().max())
    scale = max(float(probe.logits.abs().max()), 1.0)
    allowed = 0.0 if same_kernels else CROSS_DEVICE_TOLERANCE * scale
    if difference > allowed:
        raise SavedModelError(
            f"{output_dir}: the saved model does not reproduce the trained model: the largest logit "
            f"difference on the reload probe is {difference:.4g} (allowed {allowed:.4g}). Some weights "
            "were not saved or do not fit the saved config.json; do not use this folder"
        )
    logger.info(
        "reload check passed for %s (%s save, largest logit difference %.3g)",
        output_dir,
        save_format(output_dir),
        difference,
    )
