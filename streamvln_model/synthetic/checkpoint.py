"""Random-init StreamVLN checkpoints in the LLaVA layout, sized to train in seconds on a CPU.

They load through exactly the code path real checkpoints use (`from_pretrained` of a local
folder holding config.json, model.safetensors, the tokenizer and the image processor).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from streamvln_model.checkpoint.save import save_checkpoint_folder
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.modeling import StreamVLNForCausalLM
from streamvln_model.model.tokenizer import load_tokenizer
from streamvln_model.model.vision import build_image_processor, resolve_vision_config

QWEN2_PADDED_VOCAB = 151936  # Qwen2 embedding rows (tokenizer has 151,665 ids; the rest is padding)

# 8x8 patches of 14 px -> 4x4 = 16 pooled tokens per frame.
TINY_TOWER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 112,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}

PRESETS: dict[str, dict] = {
    # Trains at ~1 step/s per CPU core.
    "tiny": {
        "llm": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        "vision": TINY_TOWER,
    },
    # ~10x the tiny preset's weight bytes (~0.8 GB in fp32, nearly all in the 151,936-row embedding
    # and lm_head), same tower and depth: for checks that must not scale with checkpoint size.
    "small": {
        "llm": {
            "hidden_size": 640,
            "intermediate_size": 1280,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
        },
        "vision": TINY_TOWER,
    },
}


def preset_config(preset: str = "tiny") -> StreamVLNConfig:
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: unknown; choose from {', '.join(PRESETS)}")
    sizes = PRESETS[preset]
    return StreamVLNConfig(
        vocab_size=QWEN2_PADDED_VOCAB,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        architectures=["StreamVLNForCausalLM"],
        mm_vision_tower=f"synthetic/siglip-{preset}",
        mm_hidden_size=sizes["vision"]["hidden_size"],
        mm_patch_merge_type="spatial_unpad",
        mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model",
        vision_config=dict(sizes["vision"]),
        **sizes["llm"],
    )


def write_checkpoint(out: str | Path, preset: str = "tiny", seed: int = 0, overwrite: bool = False) -> Path:
    """Write model + tokenizer + image processor (+ tower folder, see checkpoint/layout.py); built aside and
    renamed, never half-written."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty. Fix: choose another folder or pass --overwrite"
        )
    config = preset_config(preset)
    torch.manual_seed(seed)
    model = StreamVLNForCausalLM(config)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # The tower folder's path in config.json must be the final one, not the `.partial` one.
    image_processor = build_image_processor(resolve_vision_config(config))
    save_checkpoint_folder(model, load_tokenizer(), image_processor, partial, final_dir=out)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
