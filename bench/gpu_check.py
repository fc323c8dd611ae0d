"""One-GPU check of the real training path on a 1.5B-class StreamVLN: DDP-1, ZeRO-2 and 4-bit QLoRA.

What it does, in under 8 minutes on one H100/H200-class GPU (nothing is downloaded):

1. builds a random-init checkpoint locally: a Qwen2-1.5B-shaped LLM (hidden 1536, intermediate
   8960, 28 layers, 12 heads, 2 KV heads, vocab 151936, tied embeddings, as Qwen2-1.5B) with a
   SigLIP-so400m-shaped tower (26 stored layers, 384 px, patch 14) and the mlp2x_gelu projector,
   saved with the real Qwen2 tokenizer (streamvln_model.model.tokenizer) in the LLaVA layout;
2. writes synthetic trajectories with 640x480 frames (streamvln_model.synthetic.write_trajectories);
3. per mode, runs the real worker (`streamvln_model.train`, the published flags) under
   `torchrun --nproc_per_node 1` for a few steps with bf16, sdpa and gradient checkpointing:
   `ddp` (plain torchrun, one process), `zero2` (DeepSpeed ZeRO-2, configs/deepspeed/zero2.json)
   and `qlora` (--bits 4 --lora_enable: NF4 LLM, LoRA r=64, tower and projector trained);
4. prints per mode: tokens/s, peak memory (torch.cuda.max_memory_allocated), MFU against the
   card's dense bf16 peak, and the memory plan's predicted peak (streamvln_model.training.memory).

Measured in the worker process by a callback added to the worker's own (the final save and its
reload check are skipped: this is a speed and memory check). Tokens are the LLM's unpadded
spliced tokens (text + visual) of the timed steps (the first `--warmup` steps are not timed).

MFU = model FLOPs / time / peak. Model FLOPs per step follow the 6·N·tokens approximation plus
attention, as in the PaLM paper (Chowdhery et al. 2022, appendix B): for the LLM
`tokens · (6·N_llm + 12·L·h·s)` with N_llm its weights without the embedding table (the lookup
is no matmul; lm_head only projects labelled positions, so it is left out too) and s the padded
sequence length; for the tower `frames·P · (6·N_tower + 12·L_v·h_v·P)` with P patches per frame;
the projector `6·N_proj·frames·P`. Recomputation (gradient checkpointing) is not counted (MFU,
not hardware FLOPs utilisation); for QLoRA, whose frozen base needs no weight gradients, 6·N
overstates the work, so its MFU is comparable only in tokens/s terms.

    bench/gpu_check.sh [--steps 8] [--modes ddp,zero2,qlora] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ("ddp", "zero2", "qlora")
RESULT_PREFIX = "GPU_CHECK_RESULT "
TIME_LIMIT_S = 8 * 60

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched in order
# against torch.cuda.get_device_name() (the more specific names first).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.0),
)

# Qwen2-1.5B's sizes (its config.json) and the stored SigLIP-so400m tower (LLaVA stores 26 of 27).
QWEN2_1_5B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}


def so400m_stored() -> dict[str, Any]:
    """The public so400m tower as LLaVA checkpoints store it: without its last encoder layer."""
    from streamvln_model.model.vision import KNOWN_TOWERS

    public = KNOWN_TOWERS["google/siglip-so400m-patch14-384"]
    return {**public, "num_hidden_layers": public["num_hidden_layers"] - 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per mode (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps not timed (default 2)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--batch-size", type=int, default=1, help="per_device_train_batch_size (default 1)")
    parser.add_argument("--episodes", type=int, default=6, help="synthetic episodes (default 6)")
    parser.add_argument("--workdir", default=None, help="where checkpoint and data go (default: a temp dir)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 peak for a GPU not in the table"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one mode's process
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup} (nothing would be timed)")
    return args


def gpu_check_config():
    """The 1.5B-class StreamVLN config (random init; the tower's sizes are embedded)."""
    from streamvln_model.model.configuration import StreamVLNConfig
    from streamvln_model.synthetic.checkpoint import QWEN2_PADDED_VOCAB

    assert QWEN2_1_5B["vocab_size"] == QWEN2_PADDED_VOCAB
    return StreamVLNConfig(
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        architectures=["StreamVLNForCausalLM"],
        mm_vision_tower="synthetic/siglip-so400m-patch14-384",
        mm_hidden_size=so400m_stored()["hidden_size"],
        mm_patch_merge_type="spatial_unpad",
        mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model",
        vision_config=so400m_stored(),
        **QWEN2_1_5B,
    )


def parameter_counts(config) -> dict[str, int]:
    """Parameters per part, counted on the meta device (nothing allocated)."""
    from streamvln_model.model.builder import meta_model

    model = meta_model(config)
    counts = {"llm": 0, "embedding": 0, "tower": 0, "projector": 0, "other": 0}
    for name, param in model.named_parameters():  # tied lm_head is the embedding: counted once
        if "vision_tower" in name:
            counts["tower"] += param.numel()
        elif "mm_projector" in name:
            counts["projector"] += param.numel()
        elif "embed_tokens" in name or name.startswith("lm_head"):
            counts["embedding"] += param.numel()
        elif name == "model.image_newline":
            counts["other"] += param.numel()
        else:
            counts["llm"] += param.numel()
    counts["total"] = sum(counts.values())
    return counts


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The card's dense bf16 peak from the table (None for a card not in it)."""
    if override:
        return override
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


@dataclass(frozen=True)
class FlopShape:
    """What the FLOP count needs: matmul weights per part and the attention sizes."""

    llm_weights: int  # without the embedding table
    layers: int
    hidden: int
    tower_weights: int
    tower_layers: int
    tower_hidden: int
    patches: int
    projector_weights: int


def step_flops(shape: FlopShape, llm_tokens: int, sequence: int, frames: int) -> float:
    """Model FLOPs of training on `llm_tokens` tokens of padded length `sequence` and `frames` frames.

    6·N per token (forward 2N, backward 4N) plus attention 12·L·h·s per token (PaLM, app. B).
    """
    tower_tokens = frames * shape.patches
    llm = llm_tokens * (6 * shape.llm_weights + 12 * shape.layers * shape.hidden * sequence)
    tower = tower_tokens * (
        6 * shape.tower_weights + 12 * shape.tower_layers * shape.tower_hidden * shape.patches
    )
    return float(llm + tower + 6 * shape.projector_weights * tower_tokens)


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (TFLOP/s)."""
    if not peak or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12)


def flop_shape(config) -> FlopShape:
    counts = parameter_counts(config)
    tower = config.vision_config
    return FlopShape(
        llm_weights=counts["llm"],
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        tower_weights=counts["tower"],
        tower_layers=tower["num_hidden_layers"],
        tower_hidden=tower["hidden_size"],
        patches=(tower["image_size"] // tower["patch_size"]) ** 2,
        projector_weights=counts["projector"],
    )


def zero2_config() -> Path:
    """The repo's ZeRO-2 config (configs/deepspeed/zero2.json; the older configs/zero2.json)."""
    for candidate in ("configs/deepspeed/zero2.json", "configs/zero2.json"):
        if (REPO_ROOT / candidate).is_file():
            return REPO_ROOT / candidate
    raise FileNotFoundError("no ZeRO-2 config: configs/deepspeed/zero2.json or configs/zero2.json")


def mode_flags(
    mode: str, checkpoint: Path, data: Path, output: Path, steps: int, batch: int
) -> dict[str, Any]:
    """The published stage-one recipe's flags, sized to a few steps, plus the mode's own."""
    flags: dict[str, Any] = {
        "model_name_or_path": str(checkpoint),
        "video_folder": str(data),
        "output_dir": str(output),
        "version": "qwen_1_5",
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "num_history": 8,
        "num_future_steps": 4,
        "num_frames": 32,
        "bf16": True,
        "tf32": True,
        "attn_implementation": "sdpa",
        "gradient_checkpointing": True,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "learning_rate": 2e-5,
        "mm_vision_tower_lr": 5e-6,
        "lr_scheduler_type": "constant",
        "model_max_length": 32768,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 4,
        "seed": 0,
    }
    if mode == "zero2":
        flags["deepspeed"] = str(zero2_config())
    elif mode == "qlora":
        flags.update(
            lora_enable=True,
            lora_r=64,
            lora_alpha=16,
            bits=4,
            mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_lora_layer",
        )
    return flags


def argv_of(flags: dict[str, Any]) -> list[str]:
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


# ---- the worker side (one mode, inside torchrun) ---------------------------------------------
def run_worker(mode: str, flags: dict[str, Any], warmup: int) -> None:
    """The real worker with a measuring callback; prints one RESULT line (rank 0)."""
    import torch
    from transformers import TrainerCallback

    from streamvln_model.training import worker

    class Measure(TrainerCallback):
        """Counts the timed steps' tokens/frames from the decoder's and tower's inputs."""

        def __init__(self):
            self.tokens = self.padded = self.frames = self.longest = 0
            self.timing = False
            self.start = 0.0
            self.seconds = 0.0
            self.timed_steps = 0

        def _llm_inputs(self, module, args, kwargs):
            if not self.timing:
                return
            mask = kwargs.get("attention_mask")
            embeds = kwargs.get("inputs_embeds")
            if embeds is not None:
                self.padded += embeds.shape[0] * embeds.shape[1]
                self.longest = max(self.longest, embeds.shape[1])
                self.tokens += int(mask.sum()) if mask is not None else embeds.shape[0] * embeds.shape[1]

        def _tower_inputs(self, module, args, kwargs):
            if self.timing:
                pixels = args[0] if args else kwargs["pixel_values"]
                self.frames += pixels.shape[0]

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for module in model.modules():
                if type(module).__name__ == "StreamVLNModel":
                    module.register_forward_pre_hook(self._llm_inputs, with_kwargs=True)
                elif type(module).__name__ == "SiglipTower":
                    module.register_forward_pre_hook(self._tower_inputs, with_kwargs=True)
            torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                torch.cuda.synchronize()
                self.timing, self.start = True, time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.timing:
                self.timed_steps += 1

        def on_train_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start if self.timing else 0.0
            if state.is_world_process_zero:
                result = {
                    "mode": mode,
                    "timed_steps": self.timed_steps,
                    "seconds": self.seconds,
                    "tokens": self.tokens,
                    "padded_tokens": self.padded,
                    "longest_sequence": self.longest,
                    "frames": self.frames,
                    "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                    "device": torch.cuda.get_device_name(),
                }
                print(RESULT_PREFIX + json.dumps(result), flush=True)

    measure = Measure()
    own_callbacks = worker._callbacks
    worker._callbacks = lambda: [*own_callbacks(), measure]
    worker.save_trained_model = lambda *args, **kwargs: None  # a speed/memory check: no final save
    worker.train(argv_of(flags))


# ---- the driver side -------------------------------------------------------------------------
def build_checkpoint(out: Path) -> Path:
    """Random-init weights on the GPU (seconds, not minutes on the CPU), saved in bf16."""
    import torch

    from streamvln_model.checkpoint.save import save_checkpoint_folder
    from streamvln_model.model.modeling import StreamVLNForCausalLM
    from streamvln_model.model.tokenizer import load_tokenizer
    from streamvln_model.model.vision import build_image_processor, resolve_vision_config

    config = gpu_check_config()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = StreamVLNForCausalLM(config).to(torch.bfloat16)
    processor = build_image_processor(resolve_vision_config(config))
    save_checkpoint_folder(model.cpu(), load_tokenizer(), processor, out)
    del model
    torch.cuda.empty_cache()
    return out


def predicted_peak(flags: dict[str, Any]) -> int | None:
    """The memory plan's per-GPU peak for these flags on one GPU."""
    from streamvln_model.config.arguments import resolve_flags
    from streamvln_model.training.memory import plan_memory

    try:
        return plan_memory(resolve_flags(flags), world_size=1).run.peak_bytes
    except Exception as err:  # a bench prints what it could not plan and goes on
        print(f"memory plan for these flags failed: {err}", file=sys.stderr)
        return None


def run_mode(mode: str, flags: dict[str, Any], warmup: int, log: Path, timeout_s: float) -> dict | None:
    spec = json.dumps({"mode": mode, "flags": flags, "warmup": warmup})
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone",
        str(Path(__file__).resolve()), "--worker", spec,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as handle:
        try:
            done = subprocess.run(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=handle,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            print(f"{mode}: timed out after {timeout_s:.0f} s (log: {log})")
            return None
    handle_out = done.stdout or ""
    log.with_suffix(".stdout").write_text(handle_out)
    line = next((row for row in reversed(handle_out.splitlines()) if row.startswith(RESULT_PREFIX)), None)
    if done.returncode != 0 or line is None:
        tail = "\n    ".join(log.read_text().splitlines()[-15:])
        print(f"{mode}: failed (exit {done.returncode}); last lines of {log}:\n    {tail}")
        return None
    return json.loads(line[len(RESULT_PREFIX) :])


def report_line(result: dict, shape: FlopShape, predicted: int | None, peak: float | None) -> dict[str, Any]:
    """tokens/s, peak memory, MFU and the plan's prediction for one mode's result."""
    seconds = result["seconds"]
    flops = step_flops(shape, result["tokens"], result["longest_sequence"], result["frames"])
    utilisation = mfu(flops, seconds, peak)
    return {
        "mode": result["mode"],
        "tokens_per_s": round(result["tokens"] / seconds, 1) if seconds else None,
        "peak_gib": round(result["peak_allocated_bytes"] / 2**30, 2),
        "predicted_peak_gib": round(predicted / 2**30, 2) if predicted else None,
        "mfu": round(utilisation, 4) if utilisation is not None else None,
        "timed_steps": result["timed_steps"],
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        run_worker(spec["mode"], spec["flags"], spec["warmup"])
        return 0
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False). This check needs one "
            "NVIDIA GPU (H100/H200/A100/L40S class) and a CUDA build of torch; run it on a GPU machine: "
            "bench/gpu_check.sh",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    device = torch.cuda.get_device_name()
    peak = peak_tflops(device, args.peak_tflops)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    from streamvln_model.synthetic import write_trajectories

    checkpoint = workdir / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        shutil.rmtree(checkpoint, ignore_errors=True)
        build_checkpoint(checkpoint)
    data = workdir / "data"
    if not (data / "annotations.json").is_file():
        write_trajectories(data, episodes=args.episodes, min_steps=40, max_steps=70, image_size=(640, 480))
    config = gpu_check_config()
    counts = parameter_counts(config)
    shape = flop_shape(config)
    print(
        f"gpu_check on {device} (bf16 peak {peak or 'unknown'} TFLOP/s): "
        f"parameters {counts['total'] / 1e9:.2f}B "
        f"(LLM {(counts['llm'] + counts['embedding']) / 1e9:.2f}B, tower {counts['tower'] / 1e9:.2f}B); "
        f"setup {time.monotonic() - started:.0f} s",
        flush=True,
    )
    rows = []
    for mode in args.modes:
        flags = mode_flags(mode, checkpoint, data, workdir / f"out-{mode}", args.steps, args.batch_size)
        left = TIME_LIMIT_S - (time.monotonic() - started)
        if left < 30:
            print(f"{mode}: skipped, the {TIME_LIMIT_S} s budget is spent")
            continue
        result = run_mode(mode, flags, args.warmup, workdir / f"{mode}.log", left)
        if result is not None:
            rows.append(report_line(result, shape, predicted_peak(flags), peak))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| mode | tokens/s | peak GiB (measured) | peak GiB (memory plan) | MFU |")
    print("|---|---|---|---|---|")
    for row in rows:
        mfu_text = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        cells = (row["mode"], row["tokens_per_s"], row["peak_gib"], row["predicted_peak_gib"], mfu_text)
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    print(f"\ntotal {time.monotonic() - started:.0f} s; logs in {workdir}")
    return 0 if len(rows) == len(args.modes) else 1


if __name__ == "__main__":
    sys.exit(main())
