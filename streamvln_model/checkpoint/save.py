"""Every save mode of a model folder, in the published-compatible layout (layout.py).

- `save_trained_model`: the final save of a training run, all ranks taking part. The full model
  (under ZeRO-3 the Trainer gathers the 16-bit weights, under FSDP the full state dict), or the
  partial layouts the published script writes (`save_partial_model`): the LoRA adapter plus the
  other trained weights, or the projector alone (loading.py describes the three layouts).
- `save_checkpoint_folder`: a single-process model as a complete folder (synthetic checkpoints).

After saving, rank 0 reloads the folder and compares logits with the trained model
(reload_check.py); the flow then only reads safetensors headers (headers.py). The Trainer's
`checkpoint-N` folders during training are staging.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from streamvln_model.checkpoint.layout import (
    point_config_at_tower,
    tower_sizes,
    write_companion_files,
    write_tokenizer_fields,
)
from streamvln_model.checkpoint.loading import (
    FULL,
    LORA,
    NON_LORA_WEIGHTS,
    PROJECTOR,
    PROJECTOR_WEIGHTS,
    write_record,
)
from streamvln_model.checkpoint.reload_check import probe_model, verify_saved_model
from streamvln_model.model.freezing import LORA_KEY
from streamvln_model.model.modeling import StreamVLNForCausalLM


def save_checkpoint_folder(
    model: StreamVLNForCausalLM, tokenizer, image_processor, folder: Path, final_dir: Path | None = None
) -> None:
    """Save a single-process model as a complete folder (used for synthetic checkpoints)."""
    folder = Path(folder)
    stored = model.get_vision_tower().config
    needs_tower = point_config_at_tower(model.config, stored, Path(final_dir or folder))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    write_companion_files(folder, stored if needs_tower else None, image_processor)


def forget_unused_weight_conversions(model: StreamVLNForCausalLM) -> None:
    """Keep only the checkpoint renamings that matched a weight when the model was loaded.

    `save_pretrained` reverses the renamings recorded at load time, so that a folder is saved in
    the layout it was read from. The regular loader records only the renamings that matched; the
    ZeRO-3 loader of transformers 5.24 records all of them, and reversing SigLIP's (drop a
    `vision_model.` prefix) adds a prefix our checkpoints never had: the saved tower weights then
    read `...vision_model.vision_model.*` and fit no model. Filtering makes every strategy save
    the names the regular loader would.
    """
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if c.was_used()]


def weights_are_sharded(trainer) -> bool:
    """Whether each rank holds only a shard of the weights (ZeRO-3, FSDP): any forward of the
    trained model is then a collective that every rank must run."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or bool(getattr(trainer, "is_fsdp_enabled", False))


@contextmanager
def zero3_init_paused(trainer) -> Iterator[None]:
    """Load models as plain single-process models while ZeRO-3 training is configured.

    With ZeRO-3 configured, `from_pretrained` builds the model inside `deepspeed.zero.Init`, a
    collective that partitions it across all ranks; rank 0 reloading the saved folder alone
    would wait there for the other ranks forever. The reload check needs the whole model in
    rank 0, so the DeepSpeed config is detached for its duration and attached again after.
    """
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    config = getattr(trainer.args, "hf_deepspeed_config", None)
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            set_hf_deepspeed_config(config)


def save_trained_model(trainer, tokenizer, image_processor, output_dir: str) -> None:
    """Save the final model folder (all ranks take part), then rank 0 checks it reloads exactly.

    Under ZeRO-3 the Trainer gathers the full weights for the save
    (`stage3_gather_16bit_weights_on_model_save`), under FSDP the full state dict
    (`state_dict_type: FULL_STATE_DICT`); preflight refuses configs without them. The probe the
    reload is compared against is the trained model's own forward, run on every rank when the
    weights are sharded, so it sees the full trained weights and not rank 0's shard.
    """
    trainer.save_state()
    model = trainer.model
    model.config.use_cache = True
    if trained_format(model) != FULL:  # LoRA adapter, or the projector alone (published layouts)
        save_partial_model(trainer, tokenizer, image_processor, output_dir)
        return
    stored = model.get_vision_tower().config
    needs_tower = point_config_at_tower(model.config, stored, Path(output_dir))
    forget_unused_weight_conversions(model)
    trainer.save_model(output_dir)
    probe = None
    if trainer.is_world_process_zero() or weights_are_sharded(trainer):
        probe = probe_model(model)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        image_processor.save_pretrained(output_dir)
        write_companion_files(Path(output_dir), stored if needs_tower else None, image_processor)
        with zero3_init_paused(trainer):
            verify_saved_model(output_dir, probe)


# --- Partial saves: the LoRA adapter, or the projector alone ---------------------------------------
def trained_format(model) -> str:
    """The layout a trained model is saved in, as published: the adapter (plus the other trained
    weights) with LoRA; the projector alone when only projector (or resampler) weights train;
    else the full model.

    Decided on what actually trains: the published script also saves only the projector under
    `--tune_mm_mlp_adapter --unfreeze_mm_vision_tower`, losing the trained tower; here that run
    saves the full model.
    """
    from streamvln_model.model.freezing import PROJECTOR_PREFIX, RESAMPLER_PREFIX
    from streamvln_model.model.lora import is_peft_model

    if is_peft_model(model):
        return LORA
    trained = [name for name, param in model.named_parameters() if param.requires_grad]
    if trained and all(name.startswith((PROJECTOR_PREFIX, RESAMPLER_PREFIX)) for name in trained):
        return PROJECTOR
    return FULL


def full_tensors(model, names: list[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the named parameters, whole even where ZeRO-3 or FSDP shard them.

    Every rank must call it: gathering a ZeRO-3 partition or an FSDP DTensor is a collective.
    """
    params = dict(model.named_parameters())
    selected = [params[name] for name in names]
    if any(hasattr(param, "ds_id") for param in selected):
        import deepspeed

        with deepspeed.zero.GatheredParameters(selected, modifier_rank=None):
            return {name: params[name].detach().cpu().clone() for name in names}
    return {
        name: (param.full_tensor() if hasattr(param, "full_tensor") else param).detach().cpu().clone()
        for name, param in zip(names, selected, strict=True)
    }


def save_partial_model(trainer, tokenizer, image_processor, output_dir: str) -> None:
    """The LoRA or projector-only layout (loading.py), then rank 0's reload check against the
    trained model, as for a full save.

    LoRA: the Trainer writes the adapter (adapter_model.safetensors, adapter_config.json; it
    gathers sharded weights itself), then every other trained weight goes to
    non_lora_trainables.safetensors under the same peft names as the published .bin. Projector:
    mm_projector.safetensors. Both write config.json (with `vision_config`, so the tower sizes do
    not depend on the base's path) and the record of the base checkpoint.
    """
    from streamvln_model.model.lora import unwrap

    model = trainer.model
    base = unwrap(model)
    layout = trained_format(model)
    trained = [name for name, param in model.named_parameters() if param.requires_grad]
    if layout == LORA:
        trainer.save_model(output_dir)
        files = {NON_LORA_WEIGHTS: full_tensors(model, [n for n in trained if LORA_KEY not in n])}
    else:
        files = {PROJECTOR_WEIGHTS: full_tensors(model, trained)}
    probe = None
    if trainer.is_world_process_zero() or weights_are_sharded(trainer):
        probe = probe_model(model)
    if not trainer.is_world_process_zero():
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for file, tensors in files.items():
        save_file(tensors, str(out / file), metadata={"format": "pt"})
    if not base.config.vision_config:
        base.config.vision_config = tower_sizes(base.get_vision_tower().config)
    base.config.save_pretrained(out)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    write_tokenizer_fields(out)
    write_record(out, layout, base.name_or_path, probe.dtype)
    with zero3_init_paused(trainer):
        verify_saved_model(out, probe)
