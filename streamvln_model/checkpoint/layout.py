"""The published-compatible folder: what the published StreamVLN code needs beside the weights.

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

The saves themselves are in save.py, the reload check in reload_check.py, the flow's header
check in headers.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import SiglipVisionConfig, SiglipVisionModel

from streamvln_model.checkpoint.loading import WEIGHT_FILE, weight_shards
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.vision import KNOWN_TOWERS, resolve_vision_config

logger = logging.getLogger("streamvln.checkpoint")

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
    tensors = {}
    for shard in weight_shards(folder) or [WEIGHT_FILE]:
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
