"""The verdict: the run's estimate against `--gpu_memory_gb`, the ladder's cheapest fit, the
report rows (Prefect table, MLflow), and the entry points `plan_memory` / `memory_problems`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamvln_model.config.strategies import StrategyError, read_strategy
from streamvln_model.training.memory.estimate import GIB, Estimate, estimate, gib
from streamvln_model.training.memory.ladder import _with_bucket_defaults, ladder, lora_parts
from streamvln_model.training.memory.shape import ModelShape, Precision, Workload, model_shape, workload_of
from streamvln_model.training.memory.strategy import Strategy, strategy_of

# What the GPU holds outside PyTorch's allocator (CUDA context, cuBLAS/NCCL workspaces), and the
# share of the rest usable before fragmentation bites: the verdict's margins.
CUDA_CONTEXT_BYTES = 1 * GIB
ALLOCATOR_HEADROOM = 0.9


def usable_bytes(gpu_memory_gb: float) -> int:
    """What a GPU of `gpu_memory_gb` GiB leaves to PyTorch's tensors (module constants)."""
    return int((gpu_memory_gb * GIB - CUDA_CONTEXT_BYTES) * ALLOCATOR_HEADROOM)


@dataclass
class MemoryReport:
    """The run's estimate, the verdict against `gpu_memory_gb`, and the ladder of cheaper fits."""

    run: Estimate
    gpu_memory_gb: float | None
    candidates: list[Estimate] = field(default_factory=list)

    @property
    def usable_bytes(self) -> int | None:
        return usable_bytes(self.gpu_memory_gb) if self.gpu_memory_gb is not None else None

    @property
    def fits(self) -> bool | None:
        return None if self.usable_bytes is None else self.run.peak_bytes <= self.usable_bytes

    @property
    def cheapest_fit(self) -> Estimate | None:
        usable = self.usable_bytes
        return next((c for c in self.candidates if usable is not None and c.peak_bytes <= usable), None)

    def problem(self) -> str | None:
        """The preflight problem when the run cannot fit: the numbers and the cheapest change."""
        if self.fits is not False:
            return None
        run, usable = self.run, self.usable_bytes or 0
        text = (
            f"--gpu_memory_gb {self.gpu_memory_gb:g}: {run.label} on {run.world_size} GPU(s) needs "
            f"~{gib(run.peak_bytes)} per GPU ({run.breakdown()}; sequence {run.sequence_length} tokens, "
            f"{run.frames_per_step} frames per micro-batch), but {gib(max(usable, 0))} of "
            f"{self.gpu_memory_gb:g} GiB is usable."
        )
        fit = self.cheapest_fit
        if fit is not None:
            return text + f" Fix: {fit.change} ({fit.label}: ~{gib(fit.peak_bytes)} per GPU)"
        if not self.candidates:
            return text + " Fix: more GPUs, a smaller --per_device_train_batch_size, or a larger GPU"
        last = self.candidates[-1]
        return (
            text + f" Nothing fits: even {last.change} ({last.label}) needs ~{gib(last.peak_bytes)} per GPU. "
            "Fix: a larger GPU, a smaller --per_device_train_batch_size or --num_frames, or more GPUs"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per strategy (the run first), in GiB, for the Prefect table and MLflow."""
        usable = self.usable_bytes
        rows = []
        for item in [self.run, *self.candidates]:
            rows.append(
                {
                    "strategy": item.label,
                    "change": item.change or "(this run)",
                    "parameters_gib": round(item.parameter_bytes / GIB, 2),
                    "gradients_gib": round(item.gradient_bytes / GIB, 2),
                    "optimizer_gib": round(item.optimizer_bytes / GIB, 2),
                    "buffers_gib": round(item.buffer_bytes / GIB, 2),
                    "activations_gib": round(item.activation_bytes / GIB, 2),
                    "step_transient_gib": round(item.step_transient_bytes / GIB, 2),
                    "peak_gib": round(item.peak_bytes / GIB, 2),
                    "cpu_offloaded_gib": round(item.cpu_bytes / GIB, 2),
                    "fits": "-" if usable is None else ("yes" if item.peak_bytes <= usable else "no"),
                }
            )
        return rows


def report(
    shape: ModelShape,
    work: Workload,
    precision: Precision,
    strategy: Strategy,
    world_size: int,
    gpu_memory_gb: float | None = None,
    lora_r: int = 64,
) -> MemoryReport:
    """The run's estimate and, when a GPU size is given, every rung of the ladder (cheapest first)."""
    run = estimate(shape, work, precision, strategy, world_size)
    candidates = []
    if gpu_memory_gb is not None:
        for flags, rung in ladder(strategy, strategy.lora_r or lora_r, lora_parts(shape)):
            rung = _with_bucket_defaults(rung, shape.hidden)
            candidates.append(estimate(shape, work, precision, rung, world_size, change=flags))
    return MemoryReport(run=run, gpu_memory_gb=gpu_memory_gb, candidates=candidates)


def plan_memory(
    arguments,
    world_size: int,
    deepspeed: str | Path | dict | None = None,
    config=None,
    text_tokens: int | None = None,
) -> MemoryReport:
    """The memory report for parsed `arguments` on `world_size` GPUs (meta device, reads no weights).

    `deepspeed` is the launch's DeepSpeed config when it is not in the flags (the flow's
    LaunchConfig.deepspeed); `config` the model config already built with the run's overwrites.
    """
    from streamvln_model.model.builder import meta_model, model_config
    from streamvln_model.model.freezing import freezing_plan

    model_args, data_args, training_args = arguments.as_tuple()
    sharding = read_strategy(training_args, deepspeed).check()  # a bad config says why before the model
    config = config if config is not None else model_config(model_args, data_args, training_args)
    model = meta_model(config)
    plan = freezing_plan(model_args, training_args)
    shape = model_shape(model, plan.trains, set(model.unused_parameter_names()))
    strategy = strategy_of(training_args, hidden=config.hidden_size, sharding=sharding)
    return report(
        shape,
        workload_of(shape, data_args, training_args, text_tokens),
        Precision.of(training_args),
        strategy,
        world_size,
        getattr(training_args, "gpu_memory_gb", None),
        lora_r=int(training_args.lora_r),
    )


def memory_problems(arguments, world_size: int, deepspeed: str | Path | dict | None = None) -> list[str]:
    """Preflight: the problem when `--gpu_memory_gb` is set and the run cannot fit, else nothing."""
    if getattr(arguments.training, "gpu_memory_gb", None) is None:
        return []
    try:
        problem = plan_memory(arguments, world_size, deepspeed).problem()
    except StrategyError as err:  # the problems preflight's strategy check names for this config
        return list(err.problems)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"--gpu_memory_gb: cannot plan the memory of this run ({err})"]
    return [problem] if problem else []
