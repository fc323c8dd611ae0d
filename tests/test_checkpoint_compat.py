"""Checkpoints this project saves are read by the published StreamVLN code's stack (transformers 4.45).

A second virtualenv (`scripts/compat_venv.sh`: transformers==4.45.1, the pin of the published
requirements.txt) reads two folders the way the published evaluation does: the synthetic
checkpoint (`write_checkpoint`) and a folder written by the training worker's
`save_trained_model`. It runs `AutoConfig.from_pretrained`, `AutoTokenizer.from_pretrained`
and the published `im_start, im_end = tokenizer.additional_special_tokens_ids`, opens
`mm_vision_tower` with `SiglipVisionModel.from_pretrained` and deletes its last layer as the
LLaVA-NeXT loader does, and loads the language model with `Qwen2ForCausalLM` (the published
class's base) to compare logits with ours: equal logits show the RoPE base (1e6) was read.

The reload check and the flow's header-only check are tested here too.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from streamvln_model import StreamVLNConfig, StreamVLNForCausalLM
from streamvln_model.checkpoint.headers import check_saved_files
from streamvln_model.checkpoint.layout import TOWER_DIRNAME, SavedModelError, point_config_at_tower
from streamvln_model.checkpoint.reload_check import probe_model, verify_saved_model
from streamvln_model.checkpoint.save import save_trained_model
from streamvln_model.config.arguments import TrainingArguments
from streamvln_model.model.conversation import prepare_tokenizer
from streamvln_model.model.tokenizer import load_tokenizer
from streamvln_model.model.vision import build_image_processor, resolve_vision_config
from streamvln_model.synthetic.checkpoint import preset_config
from streamvln_model.training.trainer import StreamVLNTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT_IDS = [9707, 11, 1052, 374, 264, 6006, 13, 151644, 872, 198, 27737, 311, 279, 6006, 151645, 198]
CHATML_MARKERS = ["<|im_start|>", "<|im_end|>"]
TOWER_PREFIX = "model.vision_tower.vision_tower."

# Runs in the transformers 4.45 virtualenv: argv = JSON list of folders, JSON list of token ids.
PUBLISHED_READ = r"""
import json, sys
from pathlib import Path
import torch, transformers
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM, SiglipVisionModel

TOWER_PREFIX = "model.vision_tower.vision_tower."
results = {}
for folder in json.loads(sys.argv[1]):
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=4096, padding_side="right")
    im_start, im_end = tokenizer.additional_special_tokens_ids  # the published preprocess_qwen
    result = {
        "transformers": transformers.__version__,
        "config_class": type(config).__name__,
        "model_type": config.model_type,
        "architectures": config.architectures,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "mm_vision_tower": config.mm_vision_tower,
        "additional_special_tokens": tokenizer.additional_special_tokens,
        "markers": [im_start, im_end],
        "chatml_ids": tokenizer.apply_chat_template([{"role": "user", "content": "Walk to the door."}]),
    }
    tower = config.mm_vision_tower
    if Path(tower).is_dir():
        siglip = SiglipVisionModel.from_pretrained(tower)
        del siglip.vision_model.encoder.layers[-1:]  # as LLaVA-NeXT's SigLipVisionTower.load_model
        stored = {}
        with safe_open(str(Path(folder) / "model.safetensors"), framework="pt") as handle:
            for name in handle.keys():
                if name.startswith(TOWER_PREFIX):
                    stored[name[len(TOWER_PREFIX):]] = handle.get_tensor(name)
        state = {k: v for k, v in siglip.state_dict().items() if not k.startswith("vision_model.head.")}
        result["tower_layers"] = len(siglip.vision_model.encoder.layers)
        result["tower_only_in_folder"] = sorted(set(state) - set(stored))
        result["tower_only_in_checkpoint"] = sorted(set(stored) - set(state))
        result["tower_max_difference"] = max(
            float((state[k].float() - stored[k].float()).abs().max()) for k in set(state) & set(stored)
        )
    model = Qwen2ForCausalLM.from_pretrained(folder, config=config).eval()
    with torch.no_grad():
        result["logits"] = model(torch.tensor([json.loads(sys.argv[2])])).logits[0].tolist()
    results[folder] = result
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def compat_python() -> str:
    """The transformers 4.45 interpreter; the script builds its venv once (stamp file)."""
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "compat_venv.sh")], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trainer_saved(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder written by the worker's save path (a real Trainer, rank 0 of 1, reload check on).

    The attention projections are scaled up first so attention is far from uniform: then the
    RoPE base visibly changes the logits, and the 4.45 comparison below really checks it.
    """
    torch.manual_seed(0)
    model = StreamVLNForCausalLM.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(40)
            layer.self_attn.k_proj.weight.mul_(40)
    tokenizer = load_tokenizer(tiny_checkpoint)
    prepare_tokenizer(tokenizer)
    out = tmp_path_factory.mktemp("trainer_saved") / "run"
    args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to="none")
    trainer = StreamVLNTrainer(model=model, args=args, processing_class=tokenizer)
    save_trained_model(trainer, tokenizer, build_image_processor(model.get_vision_tower().config), str(out))
    return out


@pytest.fixture(scope="module")
def published_read(compat_python: str, tiny_checkpoint: Path, trainer_saved: Path, tmp_path_factory) -> dict:
    folders = [str(tiny_checkpoint), str(trainer_saved)]
    done = subprocess.run(
        [compat_python, "-c", PUBLISHED_READ, json.dumps(folders), json.dumps(TEXT_IDS)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path_factory.mktemp("compat_cwd"),  # relative paths must not resolve by accident
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.processes  # the transformers 4.45 venv (scripts/compat_venv.sh) in a subprocess
@pytest.mark.parametrize("which", ["synthetic", "trainer"])
def test_published_stack_reads_config_tokenizer_tower_and_weights(
    which: str, published_read: dict, tiny_checkpoint: Path, trainer_saved: Path
) -> None:
    folder = tiny_checkpoint if which == "synthetic" else trainer_saved
    read = published_read[str(folder)]
    assert read["transformers"] == "4.45.1"
    assert (read["config_class"], read["model_type"]) == ("Qwen2Config", "qwen2")
    assert read["architectures"] == ["StreamVLNForCausalLM"]
    assert read["rope_theta"] == 1e6 and read["rope_scaling"] is None

    # The tower: an existing absolute folder inside the checkpoint, named so LLaVA-NeXT picks SigLIP.
    tower = Path(read["mm_vision_tower"])
    assert tower.is_absolute() and tower == folder.resolve() / TOWER_DIRNAME
    assert "siglip" in tower.name and "clip" not in str(tower).replace("siglip", "")
    stored = resolve_vision_config(StreamVLNConfig.from_pretrained(folder))
    assert read["tower_layers"] == stored.num_hidden_layers
    assert read["tower_only_in_folder"] == [] and read["tower_only_in_checkpoint"] == []
    assert read["tower_max_difference"] == 0.0

    # The tokenizer: the published unpacking of the two ChatML markers, and the same ids as ours.
    assert read["additional_special_tokens"] == CHATML_MARKERS
    assert read["markers"] == [151644, 151645]
    ours = load_tokenizer(folder)
    text = ours.apply_chat_template([{"role": "user", "content": "Walk to the door."}], tokenize=False)
    assert read["chatml_ids"] == ours(text, add_special_tokens=False)["input_ids"]
    assert list(ours.convert_tokens_to_ids(CHATML_MARKERS)) == [151644, 151645]

    # The language model under 4.45 gives our logits (RoPE base included).
    model = StreamVLNForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model(torch.tensor([TEXT_IDS])).logits[0]
    torch.testing.assert_close(torch.tensor(read["logits"]), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # `trainer_saved` runs the Trainer's save path (~8 s, once)
def test_rope_base_matters_for_the_trainer_saved_model(trainer_saved: Path) -> None:
    """Guards the test above: with theta 10000 (what 4.x reads without `rope_theta`) logits differ."""
    config = StreamVLNConfig.from_pretrained(trainer_saved)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1e6}
    right = StreamVLNForCausalLM.from_pretrained(trainer_saved).eval()
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    wrong = StreamVLNForCausalLM.from_pretrained(trainer_saved, config=config).eval()
    with torch.no_grad():
        ids = torch.tensor([TEXT_IDS])
        difference = (right(ids).logits - wrong(ids).logits).abs().max()
    assert difference > 1e-2


@pytest.mark.slow  # `trainer_saved`
def test_trainer_saved_folder_layout(trainer_saved: Path) -> None:
    config = json.loads((trainer_saved / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["use_cache"] is True
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1e6
    assert config["vision_config"]["num_hidden_layers"] == 2
    tokenizer_config = json.loads((trainer_saved / "tokenizer_config.json").read_text())
    assert tokenizer_config["additional_special_tokens"] == CHATML_MARKERS
    assert not isinstance(tokenizer_config.get("extra_special_tokens"), list)  # 4.47-4.57 want a dict
    assert (trainer_saved / "trainer_state.json").is_file()  # save_state is kept
    assert json.loads((trainer_saved / TOWER_DIRNAME / "config.json").read_text())["num_hidden_layers"] == 3
    assert check_saved_files(trainer_saved) == {"unexpected": []}


@pytest.mark.slow  # `trainer_saved`
def test_moved_folder_still_loads_here(trainer_saved: Path, tmp_path: Path) -> None:
    """The absolute tower path goes stale when the folder moves; ours reads `vision_config` instead."""
    moved = shutil.copytree(trainer_saved, tmp_path / "moved")
    config = json.loads((moved / "config.json").read_text())
    config["mm_vision_tower"] = str(tmp_path / "nowhere" / TOWER_DIRNAME)
    (moved / "config.json").write_text(json.dumps(config))
    original = StreamVLNForCausalLM.from_pretrained(trainer_saved).eval()
    relocated = StreamVLNForCausalLM.from_pretrained(moved).eval()
    inputs = probe_model(original).inputs
    with torch.no_grad():
        assert torch.equal(original(**inputs).logits, relocated(**inputs).logits)


def test_old_streamvln_model_type_still_loads_through_auto_classes(
    trainer_saved: Path, tmp_path: Path
) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    old = shutil.copytree(trainer_saved, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    config["model_type"] = "streamvln"
    (old / "config.json").write_text(json.dumps(config))
    assert type(AutoConfig.from_pretrained(old)) is StreamVLNConfig
    assert type(AutoModelForCausalLM.from_pretrained(old)) is StreamVLNForCausalLM


# --- mm_vision_tower: public id or a folder ----------------------------------------------------------
def test_known_public_tower_is_written_as_its_hub_id(tmp_path: Path) -> None:
    config = StreamVLNConfig(mm_vision_tower="/data/towers/siglip-so400m-patch14-384/")
    stored = resolve_vision_config(config)  # so400m less its last layer, as LLaVA stores it
    assert point_config_at_tower(config, stored, tmp_path) is False
    assert config.mm_vision_tower == "google/siglip-so400m-patch14-384"
    assert config.vision_config["hidden_size"] == 1152
    # Another depth or size is not what the published loader would build from the public id.
    other = StreamVLNConfig(mm_vision_tower="google/siglip-so400m-patch14-384")
    shallower = resolve_vision_config(other)
    shallower.num_hidden_layers -= 1
    assert point_config_at_tower(other, shallower, tmp_path) is True
    assert other.mm_vision_tower == str(tmp_path.resolve() / TOWER_DIRNAME)


def test_tower_path_with_clip_in_it_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = preset_config("tiny")
    with caplog.at_level(logging.WARNING, logger="streamvln.checkpoint"):
        point_config_at_tower(config, resolve_vision_config(config), tmp_path / "clip-runs" / "out")
    assert "CLIP tower" in caplog.text


# --- The checks themselves ---------------------------------------------------------------------------
def test_reload_check_rejects_a_folder_that_is_not_the_trained_model(tiny_checkpoint: Path) -> None:
    torch.manual_seed(123)  # same architecture, other weights: what a save that lost weights gives
    other = StreamVLNForCausalLM(StreamVLNConfig.from_pretrained(tiny_checkpoint))
    probe = probe_model(other)
    with pytest.raises(
        SavedModelError, match=r"does not reproduce the trained model.*do not use this folder"
    ):
        verify_saved_model(tiny_checkpoint, probe)
    verify_saved_model(tiny_checkpoint, probe_model(StreamVLNForCausalLM.from_pretrained(tiny_checkpoint)))


def test_header_check_names_missing_files_and_wrong_shapes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").symlink_to(tiny_checkpoint / "model.safetensors")
    with pytest.raises(SavedModelError, match=r"no config\.json"):
        check_saved_files(broken)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["intermediate_size"] = 96
    (broken / "config.json").write_text(json.dumps(config))
    shutil.copy(tiny_checkpoint / "tokenizer_config.json", broken)
    with pytest.raises(
        SavedModelError, match=r"mlp.down_proj.weight' has shape \[64, 128\].*expects \[64, 96\]"
    ):
        check_saved_files(broken)
