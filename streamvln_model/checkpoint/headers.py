"""The one checkpoint-header checker: weight names and shapes read from safetensors headers (no
tensor is read) against a model built on the meta device.

Used before training, on a checkpoint to start from (preflight's `checkpoint_report`:
`checkpoint_problems`), and after training, on the saved folder (the flow's saving stage and
registration: `check_saved_files`; the flow host never holds the weights). A full folder is
checked against its config.json, a LoRA or projector-only save (loading.py) against its base
checkpoint and the run's config. Every problem is said the same way by `shape_problems`.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch
from safetensors import safe_open

from streamvln_model.checkpoint.adapters import ADAPTER_WEIGHTS
from streamvln_model.checkpoint.layout import TOKENIZER_CONFIG, SavedModelError
from streamvln_model.checkpoint.loading import (
    FULL,
    LORA,
    NON_LORA_WEIGHTS,
    PROJECTOR_WEIGHTS,
    WEIGHT_FILE,
    WEIGHT_INDEX,
    SaveLayoutError,
    base_checkpoint,
    run_config,
    save_format,
    weight_shards,
)
from streamvln_model.config.errors import FlagError
from streamvln_model.model.builder import meta_model
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.modeling import StreamVLNForCausalLM

Shapes = dict[str, tuple[int, ...]]
FULL_CHECKPOINT_FIX = "use a full StreamVLN/LLaVA-Video checkpoint"
OTHER_MODEL_FIX = "config.json and the weights come from different models"
UNFINISHED_FIX = "the training run did not finish saving; train again"


def file_shapes(file: str | Path) -> Shapes:
    """Weight name -> shape from one safetensors file's header."""
    with safe_open(str(file), framework="pt") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


def checkpoint_shapes(path: str | Path) -> Shapes:
    """Weight name -> shape of a checkpoint folder (one file or an index of shards)."""
    path = Path(path)
    shards = weight_shards(path)
    if not shards:
        raise FlagError(
            [f"{path}: neither {WEIGHT_FILE} nor {WEIGHT_INDEX}. Fix: save the model as safetensors"]
        )
    shapes: Shapes = {}
    for shard in shards:
        shapes.update(file_shapes(path / shard))
    return shapes


def shape_problems(
    where: str | Path,
    stored: Shapes,
    expected: dict[str, tuple[int, ...] | torch.Size],
    *,
    complete: bool = True,
    strict: bool = False,
    skip: Collection[str] = (),
    fix_missing: str = FULL_CHECKPOINT_FIX,
    fix_shape: str = OTHER_MODEL_FIX,
) -> tuple[list[str], list[str]]:
    """(problems, unexpected): `stored` (from headers) against the model's `expected` shapes.

    A problem is a weight of another shape, and with `complete` a missing one (`skip`: names
    never checked, e.g. a tied `lm_head.weight`); with `strict`, a stored weight the model has no
    place for too. `unexpected` lists those stored names either way.
    """
    problems = []
    for name, shape in expected.items():
        if name in skip:
            continue
        if name not in stored:
            if complete:
                problems.append(f"{where}: checkpoint lacks weight {name!r}. Fix: {fix_missing}")
        elif stored[name] != tuple(shape):
            problems.append(
                f"{where}: weight {name!r} has shape {list(stored[name])} in the checkpoint but the config "
                f"expects {list(shape)}. Fix: {fix_shape}"
            )
    unexpected = sorted(set(stored) - set(expected))
    if strict:
        problems += [
            f"{where}: weight {name!r} is no weight of the model. Fix: {fix_shape}" for name in unexpected
        ]
    return problems, unexpected


def checkpoint_problems(path: str | Path, model: StreamVLNForCausalLM) -> tuple[list[str], list[str]]:
    """(problems, unexpected names): every missing or wrongly shaped weight, named, before loading."""
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    return shape_problems(path, checkpoint_shapes(path), expected, skip=tied)


def check_saved_files(output_dir: str | Path) -> dict[str, list[str]]:
    """Weight names and shapes in the safetensors headers against config.json, with no tensor read
    (the flow host never holds the weights). Returns the weights the model does not use."""
    output_dir = Path(output_dir)
    problems = []
    for name in ("config.json", TOKENIZER_CONFIG):
        if not (output_dir / name).is_file():
            problems.append(f"{output_dir}: no {name}; the training run did not finish saving")
    if problems:
        raise SavedModelError("\n".join(problems))
    if save_format(output_dir) != FULL:
        return check_partial_files(output_dir)
    config = StreamVLNConfig.from_pretrained(output_dir)
    problems, unexpected = checkpoint_problems(output_dir, meta_model(config))
    if problems:
        raise SavedModelError("the saved model is incomplete:\n" + "\n".join(problems))
    return {"unexpected": unexpected}


def check_partial_files(output_dir: Path) -> dict[str, list[str]]:
    """The flow's header check of a LoRA or projector-only save: the base checkpoint still fits the
    run's config, and every saved tensor has a place of its shape in the model (meta device)."""
    layout = save_format(output_dir)
    weights = [ADAPTER_WEIGHTS, NON_LORA_WEIGHTS] if layout == LORA else [PROJECTOR_WEIGHTS]
    problems = [
        f"{output_dir}: no {name}; the training run did not finish saving"
        for name in weights
        if not (output_dir / name).is_file()
    ]
    try:
        base = base_checkpoint(output_dir)
    except SaveLayoutError as err:
        problems.append(str(err))
    if problems:
        raise SavedModelError("\n".join(problems))
    config, _ = run_config(output_dir)
    problems, unexpected = checkpoint_problems(base, meta_model(config))
    model = meta_model(config)
    fixes = {"strict": True, "fix_missing": UNFINISHED_FIX, "fix_shape": "the save and its base differ"}
    if layout == LORA:
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

        with torch.device("meta"):
            model = get_peft_model(model, LoraConfig.from_pretrained(str(output_dir)))
        adapter = {name: tensor.shape for name, tensor in get_peft_model_state_dict(model).items()}
        file = output_dir / ADAPTER_WEIGHTS
        problems += shape_problems(file, file_shapes(file), adapter, **fixes)[0]
    parameters = {name: param.shape for name, param in model.named_parameters()}
    extra = output_dir / weights[-1]
    problems += shape_problems(extra, file_shapes(extra), parameters, complete=False, **fixes)[0]
    if problems:
        problems.insert(0, f"the saved {layout} model does not fit its base {base}:")
        raise SavedModelError("\n".join(problems))
    return {"unexpected": unexpected}
