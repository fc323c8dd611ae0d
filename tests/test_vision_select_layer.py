"""`mm_vision_select_layer` counts in the FULL public SigLIP tower, whatever the checkpoint stores.

The reference is a full 4-layer `SiglipVisionModel` (random init): its
`output_hidden_states=True` hidden states, indexed by the select layer. Our tower stores either
all 4 layers (dropped=0) or the first 3 (dropped=1, the LLaVA layout) copied from it.
"""

from __future__ import annotations

import pytest
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from streamvln_model import StreamVLNConfig, StreamVLNForCausalLM
from streamvln_model.model.vision import SiglipTower, select_layer_problem, vision_select_problems

FULL_DEPTH = 4
SIZES = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}


@pytest.fixture(scope="module")
def full() -> SiglipVisionModel:
    torch.manual_seed(0)
    return SiglipVisionModel(SiglipVisionConfig(**SIZES, num_hidden_layers=FULL_DEPTH)).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(
        3, 3, SIZES["image_size"], SIZES["image_size"], generator=torch.Generator().manual_seed(1)
    )


def stored_tower(full: SiglipVisionModel, select_layer: int, dropped: int) -> SiglipTower:
    """Our tower holding the full tower's weights minus its last `dropped` layers."""
    stored = FULL_DEPTH - dropped
    tower = SiglipTower(
        SiglipVisionConfig(**SIZES, num_hidden_layers=stored, vision_use_head=False),
        select_layer=select_layer,
        dropped_layers=dropped,
    ).eval()
    # LLaVA keeps neither the dropped layers nor the attention-pooling head.
    weights = {
        k: v
        for k, v in full.state_dict().items()
        if not k.startswith("head.")
        and (not k.startswith("encoder.layers.") or int(k.split(".")[2]) < stored)
    }
    tower.vision_tower.vision_model.load_state_dict(weights, strict=True)
    return tower


@torch.no_grad()
def test_full_tower_stored_whole(full, pixels) -> None:
    hidden = full(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == FULL_DEPTH + 1
    features = {}
    for select in (-1, -2, -3):
        tower = stored_tower(full, select, dropped=0)
        features[select] = tower(pixels)
        torch.testing.assert_close(features[select], hidden[select], atol=1e-6, rtol=0)
    assert not torch.allclose(features[-1], features[-2])
    assert not torch.allclose(features[-2], features[-3])
    assert not torch.allclose(features[-1], features[-3])


@torch.no_grad()
def test_llava_layout_drops_the_last_layer(full, pixels) -> None:
    hidden = full(pixel_values=pixels, output_hidden_states=True).hidden_states
    for select in (-2, -3, 0, 2):
        torch.testing.assert_close(
            stored_tower(full, select, dropped=1)(pixels), hidden[select], atol=1e-6, rtol=0
        )
    with pytest.raises(
        ValueError, match=r"--mm_vision_select_layer -1: needs layer 4 .* stores only its first 3"
    ):
        stored_tower(full, -1, dropped=1)
    with pytest.raises(ValueError, match=r"--mm_vision_select_layer -6: out of range"):
        stored_tower(full, -6, dropped=1)


def test_only_the_needed_layers_run(full, pixels) -> None:
    """select -3 of a 3-layer stored tower runs 2 layers: the third is never called."""
    tower = stored_tower(full, -3, dropped=1)
    called = []
    for i, layer in enumerate(tower.vision_tower.vision_model.encoder.layers):
        layer.register_forward_hook(lambda *_, i=i: called.append(i))
    tower(pixels)
    assert called == [0, 1]


def config(**overrides) -> StreamVLNConfig:
    """A StreamVLN config whose embedded tower is the 3 stored layers (LLaVA layout by default)."""
    vision = {**SIZES, "num_hidden_layers": FULL_DEPTH - overrides.pop("dropped", 1)}
    return StreamVLNConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        mm_vision_tower="synthetic/siglip-select",
        vision_config=vision,
        **overrides,
    )


def test_preflight_problems_from_the_config_alone() -> None:
    assert StreamVLNConfig().mm_vision_tower_dropped_layers == 1  # LLaVA checkpoints lack the field
    assert vision_select_problems(config()) == []
    assert vision_select_problems(config(mm_vision_select_feature="cls_patch")) == []
    assert (
        select_layer_problem(config(mm_vision_select_layer=-1, mm_vision_tower_dropped_layers=0, dropped=0))
        is None
    )
    problem = select_layer_problem(config(mm_vision_select_layer=-1))
    assert problem is not None
    assert "--mm_vision_select_layer -1" in problem and "Fix: pass --mm_vision_select_layer -2" in problem
    (feature,) = vision_select_problems(config(mm_vision_select_feature="cls"))
    assert "--mm_vision_select_feature 'cls'" in feature and "Fix: pass patch" in feature
    with pytest.raises(ValueError, match="--mm_vision_select_layer -1"):
        StreamVLNForCausalLM(config(mm_vision_select_layer=-1))


def test_model_select_layer_reaches_the_tower(full, pixels) -> None:
    """The config value (overwritten by the run flag) decides what the model's tower returns."""
    model = StreamVLNForCausalLM(config(mm_vision_select_layer=-3)).eval()
    siglip = model.get_vision_tower().vision_tower.vision_model
    with torch.no_grad():
        expected = siglip(pixel_values=pixels, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(model.get_vision_tower()(pixels), expected, atol=1e-6, rtol=0)
