"""The memory plan predicts what training really holds, and refuses what cannot fit.

* Bytes: for the tiny model on CPU, parameters + gradients + optimizer states predicted by
  streamvln_model/training/memory/ match the tensors one real training step holds (within 10%):
  DDP measured with the HF Trainer and the optimizer it builds (tests/memory_probe.py), ZeRO-2 in a
  real 2-rank DeepSpeed run over gloo (per rank: the bf16 weights, the gradient partition, the fp32
  master partition + AdamW states).
* Activations: the per-layer formulas match the bytes autograd saves for backward (Qwen2 decoder
  layers, SigLIP encoder layers, the whole tiny model on a real batch).
* The 7B recipe on 8 x 80 GB: DDP does not fit, ZeRO-2 does (numbers derived below).
* Preflight and the flow: `--gpu_memory_gb` refuses a run that cannot fit, naming the cheapest
  change (or that nothing fits); the memory-plan stage runs and shows a table artifact.
* bench/gpu_check.py's CPU-runnable parts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from streamvln_model.model.builder import meta_model
from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.freezing import FreezingPlan
from streamvln_model.synthetic.checkpoint import preset_config
from streamvln_model.training.memory import (
    GIB,
    Precision,
    Strategy,
    Workload,
    decoder_layer_activation_bytes,
    encoder_layer_activation_bytes,
    estimate,
    model_shape,
    report,
    strategy_of,
    usable_bytes,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE = REPO_ROOT / "tests" / "memory_probe.py"
TOLERANCE = 0.10
ALL_PARTS = ("mm_vision_tower", "mm_mlp_adapter", "mm_language_model")


def within(measured: float, predicted: float, tolerance: float = TOLERANCE) -> bool:
    return abs(measured - predicted) <= tolerance * measured


def shape_of(config: StreamVLNConfig, parts: tuple[str, ...] = ALL_PARTS):
    model = meta_model(config)
    return model_shape(model, FreezingPlan(tunable_parts=parts).trains, set(model.unused_parameter_names()))


def small_workload(shape) -> Workload:
    return Workload(1, 8, 8, shape.tokens_per_frame, 256, 112)


# ---- measured parameter / gradient / optimizer bytes ------------------------------------------
@pytest.fixture(scope="module")
def probe_data(tmp_path_factory) -> Path:
    from streamvln_model.synthetic import write_trajectories

    out = tmp_path_factory.mktemp("probe") / "data"
    write_trajectories(out, episodes=2, min_steps=66, max_steps=70, seed=0)
    return out


def run_probe(
    data: Path, out: Path, *, bf16: bool, deepspeed: str | None = None, nproc: int = 1
) -> list[dict]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone"]
    command = [*launcher, str(PROBE), "--data", str(data), "--out", str(out)]
    command += ["--bf16"] if bf16 else []
    command += ["--deepspeed", deepspeed] if deepspeed else []
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]


def assert_matches(measured: dict, predicted) -> None:
    pairs = {
        "parameter_bytes": predicted.parameter_bytes,
        "gradient_bytes": predicted.gradient_bytes,
        "optimizer_bytes": predicted.optimizer_bytes,
    }
    for key, value in pairs.items():
        assert within(measured[key], value), (key, measured[key], value)
    total = sum(measured[key] for key in pairs)
    assert within(total, sum(pairs.values())), (total, sum(pairs.values()))


@pytest.mark.processes  # a training step in a subprocess (tests/memory_probe.py)
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
def test_ddp_bytes_match_one_real_training_step(probe_data, tmp_path, bf16: bool) -> None:
    """Trainer + torch AdamW at world size 1 (no DDP buckets): 2+2+4 bytes/param under --bf16
    (AdamW's states take the weights' dtype), 4+4+8 in fp32."""
    (measured,) = run_probe(probe_data, tmp_path / "ddp", bf16=bf16)
    shape = shape_of(preset_config("tiny"))
    assert measured["trainable_parameters"] == shape.trainable
    precision = Precision(2 if bf16 else 4, 2 if bf16 else 4, bf16)
    predicted = estimate(shape, small_workload(shape), precision, Strategy(), world_size=1)
    assert measured["optimizer_state_dtypes"] == (["torch.bfloat16"] if bf16 else ["torch.float32"])
    assert_matches(measured, predicted)


def zero2_config() -> str:
    for candidate in ("configs/deepspeed/zero2.json", "configs/zero2.json"):
        if (REPO_ROOT / candidate).is_file():
            return str(REPO_ROOT / candidate)
    raise FileNotFoundError("no ZeRO-2 config")


@pytest.mark.slow
def test_zero2_bytes_per_rank_match_a_real_two_rank_deepspeed_run(probe_data, tmp_path) -> None:
    """ZeRO-2, 2 ranks, bf16: full bf16 weights, a bf16 gradient partition and the fp32 master
    partition + fp32 AdamW states (12 bytes per trainable parameter / 2) on every rank."""
    shape = shape_of(preset_config("tiny"))
    strategy = strategy_of(SimpleNamespace(**training_flags(deepspeed=zero2_config())), hidden=shape.hidden)
    assert (strategy.sharding, strategy.zero_stage) == ("zero", 2)
    predicted = estimate(shape, small_workload(shape), Precision(2, 2, True), strategy, world_size=2)
    if importlib.util.find_spec("deepspeed") is not None:
        ranks = run_probe(probe_data, tmp_path / "zero2", bf16=True, deepspeed=zero2_config(), nproc=2)
    else:  # derived: the measured DDP step's tensors, partitioned as ZeRO-2 partitions them
        (fp32,) = run_probe(probe_data, tmp_path / "fp32", bf16=False)
        (bf16,) = run_probe(probe_data, tmp_path / "bf16", bf16=True)
        master = 4 * fp32["trainable_parameters"]  # DeepSpeed's fp32 copy of the trained weights
        per_rank = {
            "parameter_bytes": bf16["parameter_bytes"],
            "gradient_bytes": bf16["gradient_bytes"] / 2,
            "optimizer_bytes": (fp32["optimizer_bytes"] + master) / 2,
        }
        ranks = [per_rank, per_rank]
    assert len(ranks) == 2
    for measured in ranks:
        assert_matches(measured, predicted)


# ---- activations: the formulas against the tensors autograd saves -----------------------------
def saved_bytes(model: torch.nn.Module, forward) -> int:
    """Bytes of the distinct tensors autograd saves during `forward()`, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights and storage.data_ptr() != 0:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(seen.values())


@pytest.mark.parametrize("batch", [1, 2], ids=["one-sequence", "padded-pair"])
def test_decoder_layer_formula_matches_saved_tensors(batch: int) -> None:
    from transformers import Qwen2Config, Qwen2Model

    h, inter, layers, heads, kv_heads, s = 256, 704, 2, 8, 2, 512
    config = Qwen2Config(
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=100,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2Model(config).to(torch.bfloat16).train()
    embeds = torch.randn(batch, s, h, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.ones(batch, s, dtype=torch.long)
    mask[1:, -10:] = 0  # the second sequence is padded: sdpa then gets a mask
    measured = saved_bytes(model, lambda: model(inputs_embeds=embeds, attention_mask=mask))
    layer = decoder_layer_activation_bytes(s, batch, h, kv_heads * h // heads, inter, heads, 2, "sdpa")
    final_norm = s * batch * (4 + 2) * h
    assert within(measured, layers * layer + final_norm), (measured, layers * layer + final_norm)


def test_encoder_layer_formula_matches_saved_tensors() -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=112
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    siglip = SiglipVisionModel(config).to(torch.bfloat16).train()
    frames, patches = 6, (112 // 16) ** 2
    hidden = torch.randn(frames, patches, 128, dtype=torch.bfloat16, requires_grad=True)

    def forward():
        x = hidden
        for layer in siglip.encoder.layers:
            x = layer(x, None)

    measured = saved_bytes(siglip, forward)
    predicted = 2 * encoder_layer_activation_bytes(frames, patches, 128, 256, 4, 2, "sdpa")
    assert within(measured, predicted), (measured, predicted)


@pytest.mark.slow  # a whole-model forward with activation hooks (~4 s)
def test_whole_model_activations_on_a_real_batch(probe_data) -> None:
    """The tiny model (tower, projector, LLM, labelled-positions loss) on two samples with history;
    the template's text and label counts stay within the plan's per-turn estimates."""
    from streamvln_model.data.datasets.collator import DataCollatorForNavigation
    from streamvln_model.data.datasets.navigation import VLNActionDataset
    from streamvln_model.data.formats.annotations import load_episodes
    from streamvln_model.data.index.tables import build_index
    from streamvln_model.model.conversation import prepare_tokenizer
    from streamvln_model.model.modeling import StreamVLNForCausalLM
    from streamvln_model.model.tokenizer import load_tokenizer
    from streamvln_model.model.vision import build_image_processor, resolve_vision_config
    from streamvln_model.training.memory import LABEL_TOKENS_PER_TURN, TEXT_BASE_TOKENS, TURN_TOKENS

    config = preset_config("tiny")
    tokenizer = load_tokenizer()
    spec = prepare_tokenizer(tokenizer)
    index, _ = build_index(load_episodes(str(probe_data)), 32, 8, 4)
    dataset = VLNActionDataset(index, tokenizer, spec, build_image_processor(resolve_vision_config(config)))
    samples = [dataset[i] for i in range(len(dataset))]
    with_history = [s for s in samples if len(s["images"]) == 16][:2]  # 8 history + 8 current frames
    assert len(with_history) == 2
    placeholders = 9  # one <memory> and eight <image>
    text = max(len(s["input_ids"]) for s in with_history) - placeholders
    labels = int(sum((s["labels"] != -100).sum() for s in with_history))
    instruction = max(len(tokenizer(index[i]["instruction"])["input_ids"]) for i in range(len(index)))
    assert text <= TEXT_BASE_TOKENS + instruction + 8 * TURN_TOKENS
    assert labels <= 2 * 8 * LABEL_TOKENS_PER_TURN

    torch.manual_seed(0)
    model = StreamVLNForCausalLM(config).to(torch.bfloat16).train()
    model.config._attn_implementation = "sdpa"
    batch = DataCollatorForNavigation(tokenizer.pad_token_id, 4096)(with_history)
    keys = ("input_ids", "attention_mask", "labels", "images")
    measured = saved_bytes(model, lambda: model(**{k: batch[k] for k in keys}).loss)
    shape = shape_of(config)
    work = Workload(2, 8, 8, shape.tokens_per_frame, text, labels)
    predicted = estimate(shape, work, Precision(2, 2, True), Strategy(), 1).activation_bytes_full
    assert within(measured, predicted), (measured, predicted)


# ---- the 7B recipe on 8 x 80 GB ---------------------------------------------------------------
SIGLIP_SO400M_STORED = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}


def config_7b() -> StreamVLNConfig:
    return StreamVLNConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        mm_vision_tower="google/siglip-so400m-patch14-384",
        mm_hidden_size=1152,
        mm_patch_merge_type="spatial_unpad",
        vision_config=dict(SIGLIP_SO400M_STORED),
        mm_tunable_parts=",".join(ALL_PARTS),
    )


@pytest.fixture(scope="module")
def checkpoint_7b(tmp_path_factory) -> Path:
    """Only config.json: the plan builds the model on the meta device and reads no weight."""
    folder = tmp_path_factory.mktemp("qwen2-7b") / "ckpt"
    config_7b().save_pretrained(folder)
    return folder


def flags_7b(checkpoint: Path, **over) -> dict:
    return {
        "model_name_or_path": str(checkpoint),
        "video_folder": "unused",
        "output_dir": "unused",
        "version": "qwen_1_5",
        "mm_tunable_parts": ",".join(ALL_PARTS),
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "num_history": 8,
        "num_future_steps": 4,
        "num_frames": 32,
        "bf16": True,
        "per_device_train_batch_size": 2,
        "gradient_checkpointing": True,
        "model_max_length": 32768,
        "attn_implementation": "sdpa",
        "gpu_memory_gb": 80,
        **over,
    }


def test_7b_on_8x80gb_ddp_does_not_fit_and_zero2_does(checkpoint_7b) -> None:
    """Qwen2-7B + SigLIP-so400m, full fine-tuning of tower + projector + LLM, bf16, batch 2,
    gradient checkpointing, 8 GPUs of 80 GiB.

    Parameters Ψ (from the sizes; the plan counts them on the meta device):
      LLM: embed + lm_head 2 x 152064·3584 = 1,089,994,752; per decoder layer q 3584²+3584, k/v
      2 x (3584·512+512), o 3584², MLP 3 x 3584·18944, 2 norms = 233,057,792, x 28 = 6,525,618,176;
      final norm 3,584 -> 7,615,616,512.
      Tower (26 stored layers): per layer 4 x (1152²+1152) + 1152·4304+4304 + 4304·1152+1152
      + 4 x 1152 = 15,239,504, x 26 = 396,227,104; patch + position embeddings 678,528 + 839,808;
      post-layernorm 2,304 -> 397,747,744. Projector 1152·3584+3584 + 3584²+3584 = 16,980,992.
      No image_newline: the published default --mm_patch_merge_type flat is written into the
      config. Ψ = 8,030,345,248; trainable Ψt = Ψ - 2,304 (post-layernorm, never used).
    DDP per GPU: weights 2Ψ + gradients 2Ψt + AdamW states 4Ψt (bf16, the weights' dtype) +
      DDP buckets 2Ψt + max(activations ~6.1e9, foreach step temporary 2Ψt) = 2Ψ + 10Ψt
      ≈ 96.4e9 B = 89.7 GiB: over the usable (80 - 1) x 0.9 = 71.1 GiB, over 80 GiB even.
    ZeRO-2 per GPU: 2Ψ + 2Ψt/8 + 12Ψt/8 + reduce buckets 2 x 3584² x 2 B + max(activations
      ~6.1e9, fp32 gradient partition + foreach temporary 8Ψt/8) ≈ 38.2e9 B = 35.6 GiB: fits.
    Activations (checkpointed): sequence 8·196 + 8·196 + 416 text = 3552 tokens, 32 frames:
      LLM 28·2·s·b·h + one layer sb(8h + 2(6h + 2h + 4I)) + mask 2bs² + final norm + loss,
      tower 26·2·(32·729)·1152 + one layer + pixels, projector 2·32·729·(1152 + 2·3584) ≈ 6.1e9 B.
    """
    from streamvln_model.config.arguments import resolve_flags
    from streamvln_model.training.memory import memory_problems, plan_memory

    psi, psi_t = 8_030_345_248, 8_030_345_248 - 2_304
    ddp = plan_memory(resolve_flags(flags_7b(checkpoint_7b)), world_size=8)
    run = ddp.run
    assert (run.parameters_total, run.parameters_trainable) == (psi, psi_t)
    assert run.sequence_length == 3552 and run.frames_per_step == 32
    assert (run.parameter_bytes, run.gradient_bytes, run.optimizer_bytes) == (2 * psi, 2 * psi_t, 4 * psi_t)
    assert run.buffer_bytes == run.step_transient_bytes == 2 * psi_t
    assert 5.5e9 < run.activation_bytes < 6.5e9
    assert run.peak_bytes == 2 * psi + 10 * psi_t
    assert usable_bytes(80) == int(79 * GIB * 0.9)
    assert ddp.fits is False and run.peak_bytes > 80 * GIB

    zero2 = plan_memory(resolve_flags(flags_7b(checkpoint_7b)), world_size=8, deepspeed=zero2_config())
    z = zero2.run
    assert z.label == "ZeRO-2, gradient checkpointing"
    assert (z.parameter_bytes, z.gradient_bytes, z.optimizer_bytes) == (
        2 * psi,
        2 * psi_t // 8,
        12 * psi_t // 8,
    )
    assert z.buffer_bytes == 2 * 3584**2 * 2
    assert z.step_transient_bytes == 8 * psi_t // 8
    assert zero2.fits is True and 35 * GIB < z.peak_bytes < 36 * GIB

    # The refusal names the numbers and the cheapest change: ZeRO-2 (checkpointing is already on).
    problem = ddp.problem()
    assert problem.startswith("--gpu_memory_gb 80: DDP, gradient checkpointing on 8 GPU(s) needs ~89.7 GiB")
    assert (
        "Fix: --deepspeed configs/deepspeed/zero2.json (ZeRO-2, gradient checkpointing: ~35.6 GiB" in problem
    )
    assert ddp.cheapest_fit.label == "ZeRO-2, gradient checkpointing"
    assert zero2.problem() is None
    assert memory_problems(resolve_flags(flags_7b(checkpoint_7b, gpu_memory_gb=None)), 8) == []  # no verdict


@pytest.fixture(scope="module")
def shape_7b():
    return shape_of(config_7b())


def test_ladder_climbs_from_the_runs_own_strategy(shape_7b) -> None:
    """Without checkpointing the first rung is checkpointing; a ZeRO-3 run is offered offload next."""
    shape = shape_7b
    work = Workload(2, 8, 8, shape.tokens_per_frame, 416, 224, 32768)
    plain = report(shape, work, Precision(2, 2, True), Strategy(), 8, gpu_memory_gb=80)
    assert [c.change for c in plain.candidates][:2] == [
        "--gradient_checkpointing true",
        "--deepspeed configs/deepspeed/zero2.json",
    ]
    assert (
        plain.run.activation_bytes
        == plain.run.activation_bytes_full
        > 10 * plain.candidates[0].activation_bytes
    )
    zero3 = Strategy(sharding="zero", zero_stage=3, gradient_checkpointing=True)
    climbs = [c.change for c in report(shape, work, Precision(2, 2, True), zero3, 8, 80).candidates]
    assert climbs[0] == "--deepspeed configs/deepspeed/zero3_offload.json" and "--bits 4" in climbs[-1]
    qlora = report(shape, work, Precision(2, 2, True), Strategy(lora_r=64, bits=4), 8, 0.01)
    assert qlora.problem().count("Nothing fits") == 1


def training_flags(**over) -> dict:
    """A TrainingArguments-like namespace's fields, as strategy_of reads them."""
    return {
        "deepspeed": None,
        "fsdp": None,
        "fsdp_config": None,
        "lora_enable": False,
        "lora_r": 64,
        "lora_dropout": 0.05,
        "bits": 16,
        "double_quant": True,
        "gradient_checkpointing": False,
        "optim": "adamw_torch",
        "attn_implementation": "sdpa",
        **over,
    }


def test_strategy_comes_from_the_deepspeed_json_fsdp_lora_and_bits(tmp_path) -> None:
    offload = REPO_ROOT / "configs" / "deepspeed" / "zero3_offload.json"
    config = (
        json.loads(offload.read_text())
        if offload.is_file()
        else {
            "zero_optimization": {
                "stage": 3,
                "offload_optimizer": {"device": "cpu"},
                "offload_param": {"device": "cpu"},
            }
        }
    )
    zero3 = strategy_of(SimpleNamespace(**training_flags()), deepspeed=config, hidden=1000)
    assert (zero3.zero_stage, zero3.offload_optimizer, zero3.offload_params) == (3, True, True)
    assert (zero3.reduce_bucket, zero3.prefetch_bucket) == (1_000_000, 900_000)  # "auto" = h², 0.9h²
    fsdp = strategy_of(
        SimpleNamespace(
            **training_flags(fsdp=True, fsdp_config={"reshard_after_forward": False, "cpu_offload": True})
        )
    )
    assert (fsdp.sharding, fsdp.fsdp_reshard_after_forward, fsdp.offload_params) == ("fsdp", False, True)
    legacy = strategy_of(SimpleNamespace(**training_flags(fsdp="full_shard offload auto_wrap")))
    assert (legacy.fsdp_reshard_after_forward, legacy.offload_params) == (True, True)
    qlora = strategy_of(SimpleNamespace(**training_flags(lora_enable=True, lora_r=16, bits=4)))
    assert (qlora.sharding, qlora.lora_r, qlora.bits) == ("ddp", 16, 4)
    assert qlora.label == "4-bit QLoRA r=16, DDP"


def test_lora_and_4bit_count_adapters_and_quantized_weights(shape_7b) -> None:
    """LoRA: r·(in + out) per LLM Linear; the freezing flags decide what trains (mm_language_model:
    the LLM's own weights too, as published), the ladder's rung freezes the LLM. 4-bit NF4 with
    double quant: 0.5 + 1/64 + 4/(64·256) bytes per LLM Linear weight; tower and projector stay
    unquantized (quantization.SKIP_MODULES)."""
    shape = shape_7b
    per_layer = sum(64 * (i + o) for i, o in ((3584, 3584), (3584, 512), (3584, 512), (3584, 3584)))
    per_layer += 64 * (2 * (3584 + 18944) + (18944 + 3584))
    work = Workload(1, 8, 8, shape.tokens_per_frame, 416, 112)
    precision = Precision(2, 2, True)
    published = estimate(shape, work, precision, Strategy(lora_r=64), 1)
    assert published.parameters_trainable == 28 * per_layer + shape.trainable
    rung = Strategy(lora_r=64, lora_llm_frozen=True, gradient_checkpointing=True)
    lora = estimate(shape, work, precision, rung, 1)
    assert lora.parameters_trainable == 28 * per_layer + shape.multimodal_trainable
    # adapters fp32 (4 + 4 + 8 bytes), tower + projector bf16 (2 + 2 + 4)
    assert lora.optimizer_bytes == 8 * 28 * per_layer + 4 * shape.multimodal_trainable
    qlora = estimate(shape, work, precision, Strategy(lora_r=64, bits=4), 1)
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)
    expected = shape.llm_linear * nf4 + 2 * (shape.llm_other + shape.multimodal + 28 * per_layer)
    assert abs(qlora.parameter_bytes - expected) < 1e-6 * expected


# ---- preflight and the flow ---------------------------------------------------------------------
def tiny_flags(checkpoint: Path, data: Path, tmp_path: Path, **over) -> dict:
    from flows.presets import preset_parameters
    from tests.helpers import TINY_PRESET

    request = preset_parameters(TINY_PRESET)["request"]
    flags = {k: v for k, v in request.items() if k != "extra_args"}
    paths = {
        "model_name_or_path": str(checkpoint),
        "video_folder": str(data),
        "output_dir": str(tmp_path / "out"),
    }
    return {**flags, **paths, **over}


@pytest.mark.slow  # three preflights on the tiny checkpoint (~6 s)
def test_preflight_refuses_a_run_that_cannot_fit(tiny_checkpoint, synthetic_data, tmp_path) -> None:
    from streamvln_model.config.arguments import resolve_flags
    from streamvln_model.config.preflight import PreflightError, preflight

    with pytest.raises(PreflightError) as refused:
        preflight(
            resolve_flags(tiny_flags(tiny_checkpoint, synthetic_data, tmp_path, gpu_memory_gb=0.01)), "cpu"
        )
    (problem,) = refused.value.problems
    assert problem.startswith("--gpu_memory_gb 0.01: DDP on 1 GPU(s) needs ~")
    lora = "--lora_enable true --lora_r 64 --mm_tunable_parts mm_vision_tower,mm_mlp_adapter,mm_lora_layer"
    assert f"Nothing fits: even {lora} --bits 4" in problem
    preflight(resolve_flags(tiny_flags(tiny_checkpoint, synthetic_data, tmp_path, gpu_memory_gb=80)), "cpu")
    with pytest.raises(PreflightError, match="--gpu_memory_gb=-1: must be a GiB count > 0"):
        preflight(
            resolve_flags(tiny_flags(tiny_checkpoint, synthetic_data, tmp_path, gpu_memory_gb=-1)), "cpu"
        )


def test_flow_shows_the_memory_plan_and_refuses_what_cannot_fit(
    prefect_harness, tiny_checkpoint, synthetic_data, tmp_path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from tests.helpers import run_plan_only, task_states, tiny_request, train_flow

    request = tiny_request(
        model_name_or_path=str(tiny_checkpoint),
        video_folder=str(synthetic_data),
        output_dir=str(tmp_path / "out"),
    )
    result, states = run_plan_only(request, tmp_path / "plans")
    assert states["memory-plan"] == ["Completed"]
    plan = json.loads(Path(result.plan_path).read_text())
    assert plan["memory"]["strategy"] == "DDP" and plan["memory"]["fits"] is None
    assert plan["memory"]["peak_bytes"] == plan["memory"]["estimate"]["peak_bytes"] > 0
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["memory-plan"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result.flow_run_id])),
        )
    assert [a.type for a in artifacts] == ["table"]
    rows = json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
    assert rows[0]["strategy"] == "DDP" and rows[0]["change"] == "(this run)"

    state = train_flow(
        model_name_or_path=str(tiny_checkpoint),
        video_folder=str(synthetic_data),
        output_dir=str(tmp_path / "tight"),
        gpu_memory_gb=0.01,
        plan_root=tmp_path / "plans",
        plan_only=True,
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="Nothing fits") as failure:
        state.result()
    assert "--gpu_memory_gb 0.01" in str(failure.value)
    states = task_states(state.state_details.flow_run_id, expect=("memory-plan",))
    assert states["memory-plan"] == ["Failed"]
    assert "data-module" not in states  # refused before the data is scanned


# ---- bench/gpu_check.py: what runs without a GPU ------------------------------------------------
@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_gpu_check_arguments(gpu_check) -> None:
    args = gpu_check.parse_args(["--steps", "5", "--modes", "ddp,qlora"])
    assert (args.steps, args.warmup, args.modes) == (5, 2, ["ddp", "qlora"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--modes", "fsdp"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "2"])  # nothing left to time after the warm-up
    flags = gpu_check.mode_flags("qlora", Path("c"), Path("d"), Path("o"), 8, 1)
    assert (flags["bits"], flags["lora_enable"], flags["bf16"], flags["attn_implementation"]) == (
        4,
        True,
        True,
        "sdpa",
    )
    assert gpu_check.mode_flags("zero2", Path("c"), Path("d"), Path("o"), 8, 1)["deepspeed"].endswith(
        "zero2.json"
    )


def test_gpu_check_fails_fast_without_cuda(gpu_check, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    assert gpu_check.main(["--steps", "3"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


def test_gpu_check_model_is_1_5b_class(gpu_check) -> None:
    """Qwen2-1.5B (tied embeddings): 1.54B LLM parameters; the so400m tower adds 0.40B."""
    counts = gpu_check.parameter_counts(gpu_check.gpu_check_config())
    assert 1.50e9 < counts["llm"] + counts["embedding"] < 1.58e9
    assert counts["embedding"] == 151936 * 1536  # lm_head tied: counted once
    assert 0.39e9 < counts["tower"] < 0.41e9
    assert 1.9e9 < counts["total"] < 2.0e9


def test_gpu_check_mfu_arithmetic(gpu_check) -> None:
    shape = gpu_check.FlopShape(
        llm_weights=1000,
        layers=2,
        hidden=10,
        tower_weights=100,
        tower_layers=1,
        tower_hidden=4,
        patches=9,
        projector_weights=10,
    )
    # LLM: 50 tokens x (6·1000 + 12·2·10·64); tower: 2 frames x 9 patches x (6·100 + 12·1·4·9);
    # projector: 6·10·18.
    flops = gpu_check.step_flops(shape, llm_tokens=50, sequence=64, frames=2)
    assert flops == 50 * (6000 + 15360) + 18 * (600 + 432) + 1080
    assert gpu_check.mfu(flops, 2.0, 1e-6) == pytest.approx(flops / 2.0 / 1e6)
    assert gpu_check.mfu(flops, 2.0, None) is None
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("NVIDIA L40S") == 362.0
    assert gpu_check.peak_tflops("Tesla T4") is None and gpu_check.peak_tflops("Tesla T4", 65.0) == 65.0


def test_plan_artifacts_and_metrics_reach_mlflow(mlflow_tracking, tmp_path) -> None:
    """`log_plan` adds plan/memory_plan.json and memory.predicted_* metrics to the run (on the
    session's MLflow server: a fresh SQLite store would spend ~5 s on its schema migrations)."""
    import uuid

    import mlflow

    from tasks.memory import memory_result
    from tasks.tracking import log_plan
    from tasks.types import DataPlan, GradientPlan, ResolvedArguments

    shape = shape_of(preset_config("tiny"))
    memory = memory_result(report(shape, small_workload(shape), Precision(4, 4, False), Strategy(), 1, 80))
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(
        f"memory-plan-{uuid.uuid4().hex[:8]}", artifact_location=str(tmp_path / "artifacts")
    )
    run_id = client.create_run(experiment).info.run_id
    plan_path = tmp_path / "plan.json"
    plan_path.write_text("{}")
    data = DataPlan(index_path="i", fingerprint="f", summary={"sources": ["s"], "samples": 3})
    arguments = ResolvedArguments(flags={}, model={}, data={}, training={})
    log_plan.fn(
        run_id, arguments, data, GradientPlan(parts=[], counts={"trainable": 1}), str(plan_path), memory
    )
    run = client.get_run(run_id)
    assert run.data.tags["memory.strategy"] == "DDP"
    assert run.data.metrics["memory.predicted_peak_gib"] == pytest.approx(memory.peak_bytes / GIB)
    logged = json.loads(
        (tmp_path / "artifacts" / run_id / "artifacts" / "plan" / "memory_plan.json").read_text()
    )
    assert logged["fits"] is True and logged["rows"][0]["change"] == "(this run)"
