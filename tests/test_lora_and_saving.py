"""LoRA, QLoRA (4/8-bit) and projector-only training through the real flow, their saves, reloads
and registered models; the optimizer's parameter groups; the preflight of these flags.

Expected sets are written from the published rules (STREAMVLN.md §5), not from the code under
test: LoRA sits on every linear layer of the LLM (q/k/v/o, gate/up/down of each decoder layer)
and nowhere else; with `--mm_tunable_parts mm_mlp_adapter,mm_lora_layer` exactly the LoRA
weights and the projector train. Each flow run trains on the CPU in a torchrun worker whose rank 0
reloads the save and compares logits (its log line is asserted); the test then rebuilds the
trained model from the saved tensors by hand (W + alpha/r * B @ A) and compares.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from streamvln_model import StreamVLNForCausalLM
from streamvln_model.checkpoint.headers import check_saved_files
from streamvln_model.checkpoint.loading import load_trained
from streamvln_model.checkpoint.reload_check import probe_inputs, probe_logits
from streamvln_model.config.arguments import TrainingArguments, resolve_flags
from streamvln_model.model.configuration import StreamVLNConfig
from tests.helpers import mlflow_tracking_at, train_flow

LORA_PARTS = "mm_mlp_adapter,mm_lora_layer"
PEFT_PREFIX = "base_model.model."
PROJECTOR = "model.mm_projector."
LLM_LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")
RUNS = {
    # name: (flow fields, extra_args). QLoRA is slow on a CPU: one step, without the preset's warmup
    # (whose first step has learning rate 0).
    "lora": ({"mm_tunable_parts": LORA_PARTS, "max_steps": 2}, {"lora_enable": True, "lora_r": 8}),
    "qlora4": (
        {"mm_tunable_parts": LORA_PARTS, "max_steps": 1, "warmup_ratio": 0.0},
        {"lora_enable": True, "lora_r": 8, "bits": 4},
    ),
    "qlora8": (
        {"mm_tunable_parts": LORA_PARTS, "max_steps": 1, "warmup_ratio": 0.0},
        {"lora_enable": True, "lora_r": 8, "bits": 8},
    ),
    "projector": ({"mm_tunable_parts": "mm_mlp_adapter", "max_steps": 2}, {}),
}


@pytest.fixture(scope="module")
def trained(prefect_harness, mlflow_server, tiny_checkpoint, synthetic_data, tmp_path_factory):
    """name -> (flow result, output folder): each run trains once, on first use."""
    results: dict[str, tuple] = {}

    def run(name: str):
        if name not in results:
            fields, extra = RUNS[name]
            out = tmp_path_factory.mktemp(name) / "out"
            result = train_flow(
                model_name_or_path=str(tiny_checkpoint),
                video_folder=str(synthetic_data),
                output_dir=str(out),
                extra_args=extra,
                **fields,
                tracking=("lora-and-saving", f"tiny-{name}"),
                plan_root=tmp_path_factory.getbasetemp() / "plans",
            )
            results[name] = (result, Path(result.output_dir))  # the run folder under out
        return results[name]

    with mlflow_tracking_at(mlflow_server.uri):
        yield run


def _keys(file: Path) -> set[str]:
    with safe_open(str(file), framework="pt") as handle:
        return set(handle.keys())


def _base_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def _llm_linear_modules(checkpoint: Path) -> set[str]:
    """Every linear layer of the LLM, from the checkpoint's weight names (the published rule)."""
    return {
        k.removesuffix(".weight")
        for k in _keys(checkpoint / "model.safetensors")
        if LLM_LINEAR.fullmatch(k.removesuffix(".weight"))
    }


def _assert_reload_check_passed(out: Path, layout: str) -> None:
    log = (out / "train.log").read_text()
    assert f"reload check passed for {out} ({layout} save, largest logit difference 0)" in log, log[-3000:]


def _assert_lora_layout(out: Path, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Exactly LoRA on every LLM linear layer, trained, plus the trained projector; returns the
    non-LoRA tensors."""
    files = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "non_lora_trainables.safetensors"} <= files
    assert "model.safetensors" not in files and "mm_projector.safetensors" not in files
    adapter = load_file(str(out / "adapter_model.safetensors"))
    modules = {k.removeprefix(PEFT_PREFIX).split(".lora_")[0] for k in adapter}
    assert modules == _llm_linear_modules(checkpoint)
    assert all(".lora_A." in k or ".lora_B." in k for k in adapter)
    # lora_B starts at zero: every one of them moved, so every LoRA layer trained.
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if ".lora_B." in k)
    non_lora = load_file(str(out / "non_lora_trainables.safetensors"))
    base = _base_weights(checkpoint)
    projector = {k for k in base if k.startswith(PROJECTOR)}
    assert {k.removeprefix(PEFT_PREFIX) for k in non_lora} == projector
    assert all(not torch.equal(v, base[k.removeprefix(PEFT_PREFIX)]) for k, v in non_lora.items())
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        checkpoint.resolve()
    )
    return non_lora


def _predicts(model_uri: str, synthetic_data: Path) -> None:
    frame = sorted(synthetic_data.glob("images/*/rgb/*.jpg"))[0]
    policy = mlflow.pyfunc.load_model(model_uri)
    prediction = policy.predict(
        [{"instruction": "Walk past the sofa and stop.", "current_frame": str(frame)}]
    )
    assert len(prediction) == 1 and set(prediction[0]) == {"text", "actions"}
    assert all(a in (0, 1, 2, 3) for a in prediction[0]["actions"])


def test_lora_trains_exactly_lora_and_projector_and_reloads_to_the_trained_model(
    trained, tiny_checkpoint, synthetic_data
):
    result, out = trained("lora")
    assert result.steps == 2 and result.model_version
    non_lora = _assert_lora_layout(out, tiny_checkpoint)
    _assert_reload_check_passed(out, "lora")
    assert check_saved_files(out) == {"unexpected": ["model.image_newline"]}

    # The trained model rebuilt by hand from the saved tensors: W + alpha/r * B @ A, projector.
    adapter = load_file(str(out / "adapter_model.safetensors"))
    settings = json.loads((out / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    by_hand = StreamVLNForCausalLM.from_pretrained(
        tiny_checkpoint, config=StreamVLNConfig.from_pretrained(out), dtype=torch.float32
    )
    weights = by_hand.state_dict()
    for key, a in adapter.items():
        if ".lora_A." in key:
            module = key.removeprefix(PEFT_PREFIX).split(".lora_A.")[0]
            weights[f"{module}.weight"] += scale * adapter[key.replace(".lora_A.", ".lora_B.")] @ a
    weights.update({k.removeprefix(PEFT_PREFIX): v for k, v in non_lora.items()})
    by_hand.load_state_dict(weights)
    inputs = probe_inputs(by_hand)
    expected = probe_logits(by_hand, inputs)
    torch.testing.assert_close(probe_logits(load_trained(out), inputs), expected, rtol=0, atol=1e-4)
    merged = load_trained(out, merge=True)
    assert type(merged) is StreamVLNForCausalLM
    torch.testing.assert_close(probe_logits(merged, inputs), expected, rtol=0, atol=1e-4)

    _predicts(result.model_uri, synthetic_data)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_saves_and_reloads_quantized(bits, trained, tiny_checkpoint, synthetic_data):
    import bitsandbytes as bnb

    result, out = trained(f"qlora{bits}")
    assert result.steps == 1 and result.model_version
    _assert_lora_layout(out, tiny_checkpoint)
    _assert_reload_check_passed(out, "lora")  # base re-quantized + adapter + projector: same logits
    quantization = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quantization[f"load_in_{bits}bit"] is True

    model = load_trained(out)
    layer = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    base = model.get_base_model()
    for name in _llm_linear_modules(tiny_checkpoint):
        assert isinstance(base.get_submodule(f"{name}.base_layer"), layer), name
    # The tower, projector and lm_head stay in full precision (and the projector trainable).
    for name, module in base.named_modules():
        if name.startswith(("model.vision_tower.", "model.mm_projector.")) or name == "lm_head":
            assert not isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)), name

    _predicts(result.model_uri, synthetic_data)


def test_projector_only_run_saves_only_the_projector(trained, tiny_checkpoint, synthetic_data):
    result, out = trained("projector")
    assert result.steps == 2 and result.model_version
    weight_files = {p.name for p in out.glob("*.safetensors")} | {p.name for p in out.glob("*.bin")}
    assert weight_files == {"mm_projector.safetensors"}
    assert not (out / "adapter_config.json").exists()
    saved = load_file(str(out / "mm_projector.safetensors"))
    base = _base_weights(tiny_checkpoint)
    assert set(saved) == {k for k in base if k.startswith(PROJECTOR)}
    assert all(not torch.equal(v, base[k]) for k, v in saved.items())
    _assert_reload_check_passed(out, "projector")
    assert check_saved_files(out) == {"unexpected": ["model.image_newline"]}

    by_hand = StreamVLNForCausalLM.from_pretrained(
        tiny_checkpoint, config=StreamVLNConfig.from_pretrained(out), dtype=torch.float32
    )
    by_hand.load_state_dict(saved, strict=False)
    inputs = probe_inputs(by_hand)
    torch.testing.assert_close(
        probe_logits(load_trained(out), inputs), probe_logits(by_hand, inputs), rtol=0, atol=0
    )

    _predicts(result.model_uri, synthetic_data)


def test_lora_weight_path_starts_from_an_earlier_adapter(trained, tiny_checkpoint, tmp_path):
    from peft import get_peft_model_state_dict

    from streamvln_model.model.lora import apply_lora

    _, out = trained("lora")
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=["none"], lora_enable=True, lora_r=8,
        lora_weight_path=str(out),
    )  # fmt: skip
    model = apply_lora(StreamVLNForCausalLM.from_pretrained(tiny_checkpoint), args)
    loaded = get_peft_model_state_dict(model)
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


# --- Optimizer groups ----------------------------------------------------------------------------
def _no_decay(name: str) -> bool:
    """The published rule: no weight decay on biases and norm weights (LayerNorm, RMSNorm)."""
    return name.endswith(".bias") or "norm" in name.split(".")[-2]


def _groups_by_name(optimizer, model) -> dict[str, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group for group in optimizer.param_groups for p in group["params"]}


def _trainer(model, tmp_path: Path, **lrs):
    from streamvln_model.training.trainer import StreamVLNTrainer

    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=["none"],
        learning_rate=1e-3,
        weight_decay=0.1,
        **lrs,
    )
    return StreamVLNTrainer(model=model, args=args)


@pytest.fixture(scope="module")
def every_parameter_trains(tiny_checkpoint):
    model = StreamVLNForCausalLM.from_pretrained(tiny_checkpoint)
    model.requires_grad_(True)
    return model


def test_optimizer_has_three_learning_rates_and_no_decay_on_bias_or_norm(every_parameter_trains, tmp_path):
    model = every_parameter_trains
    trainer = _trainer(model, tmp_path, mm_projector_lr=2e-3, mm_vision_tower_lr=3e-3)
    by_name = _groups_by_name(trainer.create_optimizer(), model)
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    for name, group in by_name.items():
        lr = 2e-3 if "mm_projector" in name else 3e-3 if "vision_tower" in name else 1e-3
        assert group["lr"] == lr, name
        assert group["weight_decay"] == (0.0 if _no_decay(name) else 0.1), name
    # The rule's cases are all present in the tiny model.
    kinds = {"layernorm", "layer_norm", "model.norm.", "post_layernorm", ".bias"}
    assert all(any(kind in n for n in by_name) for kind in kinds)
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {1e-3, 2e-3, 3e-3}


def test_optimizer_without_module_lrs_is_the_trainers_default(every_parameter_trains, tmp_path):
    model = every_parameter_trains
    trainer = _trainer(model, tmp_path)
    optimizer = trainer.create_optimizer()
    assert len(optimizer.param_groups) == 2 and {g["lr"] for g in optimizer.param_groups} == {1e-3}
    for name, group in _groups_by_name(optimizer, model).items():
        assert group["weight_decay"] == (0.0 if _no_decay(name) else 0.1), name


def _lora_model(checkpoint: Path, output_dir: Path):
    """The checkpoint with rank-4 LoRA adapters; the adapters and the projector train."""
    from streamvln_model.model.lora import apply_lora

    args = TrainingArguments(
        output_dir=str(output_dir), use_cpu=True, report_to=["none"], lora_enable=True, lora_r=4
    )
    model = apply_lora(StreamVLNForCausalLM.from_pretrained(checkpoint), args)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or "mm_projector" in name)
    return model, args


def test_optimizer_groups_with_lora(tiny_checkpoint, tmp_path):
    model, _ = _lora_model(tiny_checkpoint, tmp_path)
    trainer = _trainer(model, tmp_path, mm_projector_lr=2e-3, mm_vision_tower_lr=3e-3)
    by_name = _groups_by_name(trainer.create_optimizer(), model)
    assert set(by_name) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, group in by_name.items():
        assert group["lr"] == (2e-3 if "mm_projector" in name else 1e-3), name
        assert group["weight_decay"] == (0.0 if name.endswith(".bias") else 0.1), name


# --- Preflight and planning ----------------------------------------------------------------------
def _problems(checkpoint: Path, tmp_path: Path, **flags) -> list[str]:
    """What preflight reports from the flags and for a CPU launch (no weights are read)."""
    from streamvln_model.config.preflight import argument_problems, machine_plan

    base = {
        "model_name_or_path": str(checkpoint), "video_folder": str(tmp_path), "output_dir": str(tmp_path),
        "version": "qwen_1_5", "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
        "num_history": 8, "num_future_steps": 4,
    }  # fmt: skip
    arguments = resolve_flags({**base, **flags})
    return argument_problems(arguments) + machine_plan(arguments, "cpu").problems


def test_preflight_names_the_flags_of_combinations_that_cannot_train(tiny_checkpoint, tmp_path):
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    cases = {
        "--bits 4 without --lora_enable": {"bits": 4, "mm_tunable_parts": "mm_mlp_adapter"},
        "--bits 8 with --mm_tunable_parts mm_language_model": {
            "bits": 8, "lora_enable": True, "mm_tunable_parts": "mm_language_model",
        },
        f"--bits 4 with --deepspeed {zero3} (ZeRO stage 3)": {
            "bits": 4, "lora_enable": True, "mm_tunable_parts": LORA_PARTS, "deepspeed": str(zero3),
        },
        "--bits 8 with --fsdp": {
            "bits": 8, "lora_enable": True, "mm_tunable_parts": LORA_PARTS, "fsdp": "full_shard",
        },
        "--lora_enable with --mm_tunable_parts mm_mlp_adapter: the LoRA layers would be added": {
            "lora_enable": True, "mm_tunable_parts": "mm_mlp_adapter",
        },
        f"--lora_weight_path {tmp_path / 'none'}: no adapter_model.safetensors": {
            "lora_enable": True, "mm_tunable_parts": LORA_PARTS, "lora_weight_path": str(tmp_path / "none"),
        },
        "--lora_weight_path x without --lora_enable": {"lora_weight_path": "x"},
        f"--mm_tunable_parts {LORA_PARTS} without --lora_enable": {"mm_tunable_parts": LORA_PARTS},
        "--quant_type='int4'": {"quant_type": "int4"},
        "--lora_bias='some'": {"lora_bias": "some"},
    }  # fmt: skip
    for message, flags in cases.items():
        problems = _problems(tiny_checkpoint, tmp_path, **flags)
        assert any(p.startswith(message) for p in problems), (message, problems)
    assert _problems(tiny_checkpoint, tmp_path, bits=4, lora_enable=True, mm_tunable_parts=LORA_PARTS) == []


def test_preflight_refuses_bits_without_bitsandbytes(tiny_checkpoint, tmp_path, monkeypatch):
    from streamvln_model.config.preflight import machine_plan
    from streamvln_model.model import lora

    monkeypatch.setattr(lora, "bitsandbytes_missing", lambda: True)
    arguments = resolve_flags(
        {"model_name_or_path": str(tiny_checkpoint), "output_dir": str(tmp_path), "bits": 8}
    )
    assert any(
        p.startswith("--bits 8: needs the bitsandbytes package")
        for p in machine_plan(arguments, "cpu").problems
    )


def test_planning_counts_lora_layers_and_the_legacy_flags_keep_published_lora_semantics(tiny_checkpoint):
    from streamvln_model.config.preflight import checkpoint_report
    from streamvln_model.model.builder import meta_model
    from streamvln_model.model.freezing import apply_freezing, freezing_plan, trainable_names
    from streamvln_model.model.lora import planned_model

    def plan(**flags):
        recipe = {"version": "qwen_1_5", "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2}
        arguments = resolve_flags(
            {"model_name_or_path": str(tiny_checkpoint), "output_dir": "x", **recipe, **flags}
        )
        names = planned_model(
            meta_model(StreamVLNConfig.from_pretrained(tiny_checkpoint)), arguments.training
        )
        return names, freezing_plan(arguments.model, arguments.training), arguments

    names, lora_plan, arguments = plan(lora_enable=True, mm_tunable_parts="mm_lora_layer")
    counts = apply_freezing(names, lora_plan)
    assert counts["trainable"] == counts["trainable.mm_lora_layer"] > 0
    assert checkpoint_report(arguments)[0] == []  # LoRA layers alone are something to train
    # Legacy flags (no --mm_tunable_parts): get_peft_model freezes all but LoRA, the projector is
    # re-enabled by initialize_vision_modules, then --tune_mm_mlp_adapter leaves the projector alone.
    names, legacy, _ = plan(lora_enable=True)
    trains = trainable_names(names, legacy)
    assert trains == {n for n, _ in names.named_parameters() if "lora_" in n or n.startswith(PROJECTOR)}
    names, adapter_only, _ = plan(lora_enable=True, tune_mm_mlp_adapter=True)
    assert trainable_names(names, adapter_only) == {
        n for n, _ in names.named_parameters() if n.startswith(PROJECTOR)
    }


def test_a_lora_checkpoint_keeps_the_other_trained_weights_for_resume(tiny_checkpoint, tmp_path):
    """peft puts only the adapter into checkpoint-N; the projector must come back on resume too."""
    from streamvln_model.training.trainer import StreamVLNTrainer

    model, args = _lora_model(tiny_checkpoint, tmp_path)
    trainer = StreamVLNTrainer(model=model, args=args)
    checkpoint = tmp_path / "checkpoint-1"
    trainer._save(str(checkpoint))
    saved = load_file(str(checkpoint / "non_lora_trainables.safetensors"))
    assert {k.removeprefix(PEFT_PREFIX) for k in saved} == {
        k for k in _base_weights(tiny_checkpoint) if k.startswith(PROJECTOR)
    }
    projector = model.get_base_model().model.mm_projector[0].weight
    before = projector.detach().clone()
    with torch.no_grad():
        projector.zero_()
    trainer._load_from_checkpoint(str(checkpoint))
    assert torch.equal(projector.detach(), before)
