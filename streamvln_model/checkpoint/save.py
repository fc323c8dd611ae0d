"""Save a model folder that both this project and the published StreamVLN code load, and check it.

What the published code (transformers 4.45 + LLaVA-NeXT) needs from a folder, beyond the
weights (see docs/COMPATIBILITY.md):

- config.json with `model_type` "qwen2" and `rope_theta` (written by `StreamVLNConfig` itself);
- `mm_vision_tower` naming a tower `SiglipVisionModel.from_pretrained` can open: the public hub
  id when the stored tower is exactly a known public one less its last layer, else a SigLIP
  folder saved beside the weights (`siglip-tower/`, one layer deeper than the stored tower
  because the published loader deletes the last layer before the checkpoint's weights load);
- tokenizer_config.json listing `additional_special_tokens` (`<|im_start|>`, `<|im_end|>`): the
  published preprocessing unpacks exactly these two ids from it.

The tower folder is written with its absolute path: the published loader resolves the path
relative to the working directory of the evaluation, not to the checkpoint, so a relative path
would only work from inside the folder. Our own loader never needs the path: every save also
embeds the stored tower's sizes as `vision_config`, so a moved or copied folder still loads here
(the published code then needs `mm_vision_tower` rewritten to the new place).

After saving, the worker reloads the folder and compares logits on a small probe with the
trained model (`verify_saved_model`), so a broken save fails the training run where the weights
already are; the flow then only reads safetensors headers (`check_saved_files`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import SiglipVisionConfig, SiglipVisionModel

from streamvln_model.checkpoint.loading import (
    FULL,
    LORA,
    NON_LORA_WEIGHTS,
    PROJECTOR,
    PROJECTOR_WEIGHTS,
    SaveLayoutError,
    base_checkpoint,
    load_trained,
    run_config,
    save_format,
    write_record,
)
from streamvln_model.model.builder import WEIGHT_FILE, WEIGHT_INDEX, checkpoint_problems, meta_model
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.constants import IMAGE_TOKEN_INDEX
from streamvln_model.model.lora import ADAPTER_WEIGHTS as ADAPTER_WEIGHTS_FILE
from streamvln_model.model.modeling import StreamVLNForCausalLM
from streamvln_model.model.vision import KNOWN_TOWERS, resolve_vision_config

logger = logging.getLogger("streamvln.saving")

TOWER_DIRNAME = "siglip-tower"
TOWER_PREFIX = "model.vision_tower.vision_tower."  # stored tower weights in a LLaVA-layout checkpoint
SIGLIP_PREFIX = "vision_model."  # what follows TOWER_PREFIX, and how SigLIP checkpoints name weights
# The published Qwen preprocessing does `im_start, im_end = tokenizer.additional_special_tokens_ids`.
CHATML_MARKERS = ["<|im_start|>", "<|im_end|>"]
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The tower's own sizes, as `vision_config` in config.json (enough to rebuild the stored tower).
TOWER_SIZE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "layer_norm_eps",
    "hidden_act",
    "attention_dropout",
)
# Largest logit difference, relative to the largest logit, accepted when the trained model ran on
# an accelerator and the reload on the CPU (different kernels). A missing or mismatched weight
# moves logits by about their own size, far above this.
CROSS_DEVICE_TOLERANCE = 5e-2


class SavedModelError(RuntimeError):
    """The saved folder does not reproduce the trained model (or misses files to load it)."""


def tower_sizes(vision_config: SiglipVisionConfig) -> dict[str, Any]:
    return {key: getattr(vision_config, key) for key in TOWER_SIZE_KEYS}


def public_tower_id(config: StreamVLNConfig, stored: SiglipVisionConfig) -> str | None:
    """The public hub id the published loader can rebuild `stored` from, or None.

    That loader loads the public tower and deletes its last layer, so the stored tower must be
    exactly a known public tower less one layer (and `mm_vision_tower` must name that tower).
    """
    name = (config.mm_vision_tower or "").rstrip("/")
    if getattr(config, "mm_vision_tower_dropped_layers", 1) != 1:
        return None
    for public in KNOWN_TOWERS:
        if name == public or name.endswith(public.split("/")[-1]):
            as_published = SimpleNamespace(
                vision_config=None, mm_vision_tower=public, mm_vision_tower_dropped_layers=1
            )
            if tower_sizes(resolve_vision_config(as_published)) == tower_sizes(stored):
                return public
    return None


def point_config_at_tower(config: StreamVLNConfig, stored: SiglipVisionConfig, final_dir: Path) -> bool:
    """Set `mm_vision_tower` (public id or `<final_dir>/siglip-tower`) and `vision_config`.

    Returns True when the tower folder must be written beside the weights. `final_dir` is where
    the folder will finally live (a synthetic checkpoint is written aside and renamed).
    """
    if not config.vision_config:
        config.vision_config = tower_sizes(stored)
    public = public_tower_id(config, stored)
    if public:
        config.mm_vision_tower = public
        return False
    tower_dir = str(Path(final_dir).resolve() / TOWER_DIRNAME)
    if "clip" in tower_dir:
        logger.warning(
            "mm_vision_tower=%s contains 'clip': the published LLaVA-NeXT builder would open it as a CLIP "
            "tower. Fix: save to a folder whose path has no 'clip' in it",
            tower_dir,
        )
    config.mm_vision_tower = tower_dir
    return True


def _read_tower_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The stored tower's tensors from the saved weights (read from disk, so it also works when
    ZeRO-3 left rank 0 with only a shard in memory), named as in a SigLIP vision checkpoint."""
    index = folder / WEIGHT_INDEX
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    tensors = {}
    for shard in shards or [WEIGHT_FILE]:
        with safe_open(str(folder / shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name.startswith(TOWER_PREFIX):
                    tensors[name[len(TOWER_PREFIX) :]] = handle.get_tensor(name)
    return tensors


def write_tower_folder(folder: Path, stored: SiglipVisionConfig, image_processor) -> Path:
    """`<folder>/siglip-tower`: a SigLIP vision checkpoint one layer deeper than the stored tower.

    The stored layers carry the saved weights; the extra last layer is all zeros, which makes it
    an identity layer (pre-LayerNorm residual blocks add nothing), so the folder also works as a
    standalone SigLIP whose last two hidden states are equal. The published loader deletes that
    layer anyway, then the checkpoint's own tower weights replace the rest.
    """
    target = Path(folder) / TOWER_DIRNAME
    target.mkdir(parents=True, exist_ok=True)
    full = SiglipVisionConfig(
        **{**tower_sizes(stored), "num_hidden_layers": stored.num_hidden_layers + 1}, vision_use_head=False
    )
    saved = _read_tower_weights(Path(folder))
    with torch.device("meta"):
        # Named as in hub SigLIP checkpoints and transformers 4.x (`vision_model.*`); transformers 5
        # drops that level in memory and maps the names on load.
        expected = {
            f"{SIGLIP_PREFIX}{name}": meta for name, meta in SiglipVisionModel(full).state_dict().items()
        }
    unexpected = sorted(set(saved) - set(expected))
    if unexpected:
        raise SavedModelError(f"{folder}: tower weights {unexpected[:5]} do not fit a SigLIP vision model")
    dtype = next(iter(saved.values())).dtype if saved else torch.float32
    weights = {
        name: saved[name].contiguous() if name in saved else torch.zeros(meta.shape, dtype=dtype)
        for name, meta in expected.items()
    }
    # transformers 4.x refuses safetensors files without the {"format": "pt"} metadata.
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    full.save_pretrained(target)
    image_processor.save_pretrained(target)
    return target


def write_tokenizer_fields(folder: Path) -> None:
    """Make tokenizer_config.json readable by transformers 4.x as published checkpoints are.

    transformers 5 writes extra special tokens as a list under `extra_special_tokens` (which
    4.47-4.57 expect to be a dict) and no `additional_special_tokens`; it reads the latter back
    as the former, so writing only `additional_special_tokens` suits both. The chat template
    goes into the file too, because 4.45 does not read chat_template.jinja.
    """
    path = Path(folder) / TOKENIZER_CONFIG
    tokenizer_config = json.loads(path.read_text())
    if isinstance(tokenizer_config.get("extra_special_tokens"), list):
        tokenizer_config.pop("extra_special_tokens")
    tokenizer_config["additional_special_tokens"] = list(CHATML_MARKERS)
    template = Path(folder) / CHAT_TEMPLATE_FILE
    if "chat_template" not in tokenizer_config and template.is_file():
        tokenizer_config["chat_template"] = template.read_text()
    path.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_companion_files(folder: Path, tower: SiglipVisionConfig | None, image_processor) -> None:
    """After weights and tokenizer are in `folder`: the tower folder (when needed) and tokenizer fields."""
    if tower is not None:
        write_tower_folder(folder, tower, image_processor)
    write_tokenizer_fields(folder)


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


# --- The reload check ----------------------------------------------------------------------------
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
    from streamvln_model.model.lora import LORA_KEY, unwrap

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


# --- The flow's check: headers only ----------------------------------------------------------------
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


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(file), framework="pt") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


def _fit_problems(file: Path, stored: dict, expected: dict, complete: bool) -> list[str]:
    """Names and shapes of `file` against the model's; with `complete`, every expected name too."""
    problems = [
        f"{file.name}: {name!r} is no weight of the model" for name in sorted(set(stored) - set(expected))
    ]
    problems += [
        f"{file.name}: {name!r} has shape {list(stored[name])}, the model {list(expected[name])}"
        for name in sorted(set(stored) & set(expected))
        if stored[name] != tuple(expected[name])
    ]
    if complete:
        problems += [f"{file.name}: lacks {name!r}" for name in sorted(set(expected) - set(stored))]
    return problems


def check_partial_files(output_dir: Path) -> dict[str, list[str]]:
    """The flow's header check of a LoRA or projector-only save: the base checkpoint still fits the
    run's config, and every saved tensor has a place of its shape in the model (meta device)."""
    layout = save_format(output_dir)
    weights = [ADAPTER_WEIGHTS_FILE, NON_LORA_WEIGHTS] if layout == LORA else [PROJECTOR_WEIGHTS]
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
    if layout == LORA:
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

        with torch.device("meta"):
            model = get_peft_model(model, LoraConfig.from_pretrained(str(output_dir)))
        adapter = {name: tensor.shape for name, tensor in get_peft_model_state_dict(model).items()}
        file = output_dir / ADAPTER_WEIGHTS_FILE
        problems += _fit_problems(file, _header_shapes(file), adapter, complete=True)
    parameters = {name: param.shape for name, param in model.named_parameters()}
    extra = output_dir / weights[-1]
    problems += _fit_problems(extra, _header_shapes(extra), parameters, complete=False)
    if problems:
        problems.insert(0, f"the saved {layout} model does not fit its base {base}:")
        raise SavedModelError("\n".join(problems))
    return {"unexpected": unexpected}
