"""The three argument dataclasses: the one place a flag and its default are declared.

Field names, types and defaults are those of the published StreamVLN parser
(InternRobotics/StreamVLN `streamvln/args.py` plus the stage-two data flags of its training
script), so `torchrun -m streamvln_model.train` takes the published command lines unchanged and
resolves them to the same values. The flow's form (tasks/parameters.py) declares no defaults of
its own: an unset form field means "the default declared here".

What each field does here (implemented, refused until a later feature lands, or accepted because
the published code ignores it too) is recorded in `streamvln_model/field_status.py`, from which
docs/ARGUMENTS.md is generated.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import transformers
from transformers.utils import is_torch_bf16_gpu_available, is_torch_tf32_available

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default="facebook/opt-125m",
        metadata={"help": "Local checkpoint folder in the LLaVA-Video / StreamVLN layout."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "(ours) Tokenizer folder; defaults to model_name_or_path, as published."},
    )
    model_class_name: str | None = field(default=None, metadata={"help": "LLaVA class name (unused)."})
    mm_tunable_parts: str | None = field(
        default=None,
        metadata={
            "help": "Comma list of mm_mlp_adapter, mm_vision_resampler, mm_vision_tower, mm_language_model, "
            "mm_lora_layer; overrides the older freezing flags."
        },
    )
    version: str | None = field(default="v0", metadata={"help": "Conversation template (qwen_1_5)."})
    freeze_backbone: bool = field(default=False)
    tune_mm_mlp_adapter: bool = field(default=False)
    tune_mm_vision_resampler: bool = field(default=False)
    vision_tower: str | None = field(default=None)
    vision_tower_pretrained: str | None = field(default=None)
    unfreeze_mm_vision_tower: bool = field(default=False)
    unfreeze_language_model: bool = field(default=False)
    mm_vision_select_layer: int | None = field(
        default=-1,
        metadata={"help": "Vision layer the features come from (full-tower index; StreamVLN: -2)."},
    )
    pretrain_mm_mlp_adapter: str | None = field(default=None)
    mm_projector_type: str | None = field(default="linear", metadata={"help": "StreamVLN: mlp2x_gelu."})
    mm_use_im_start_end: bool = field(default=False)
    mm_use_im_patch_token: bool = field(default=True)
    mm_patch_merge_type: str | None = field(default="flat")
    mm_vision_select_feature: str | None = field(default="patch")
    mm_resampler_type: str | None = field(default=None)
    mm_mask_drop_mode: str = field(default="fixed")
    mm_mask_drop_skip_percentage: float = field(default=0.0)
    mm_mask_drop_ratio: float = field(default=0.25)
    mm_mask_drop_ratio_upper: float | None = field(default=None)
    mm_mask_drop_ratio_lower: float | None = field(default=None)
    mm_spatial_pool_stride: int | None = field(default=None)
    mm_spatial_pool_size: int | None = field(default=None)
    mm_spatial_pool_mode: str = field(default="bilinear")
    mm_spatial_pool_out_channels: int | None = field(default=None)
    mm_perceiver_depth: int | None = field(default=3)
    mm_perceiver_latents: int | None = field(default=32)
    mm_perceiver_ff_mult: float | None = field(default=4)
    mm_perceiver_pretrained: str | None = field(default=None)
    mm_qformer_depth: int | None = field(default=3)
    mm_qformer_latents: int | None = field(default=32)
    mm_qformer_pretrained: str | None = field(default=None)
    rope_scaling_factor: float | None = field(default=None)
    rope_scaling_type: str | None = field(default=None)
    s2: bool | None = field(default=False)
    s2_scales: str | None = field(default="336,672,1008")
    use_pos_skipping: bool | None = field(default=False)
    pos_skipping_range: int | None = field(default=4096)
    mm_newline_position: str | None = field(default="grid")
    delay_load: bool | None = field(default=True)
    add_faster_video: bool | None = field(default=False)
    faster_token_stride: int | None = field(default=10)


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={"help": "Co-training YAML (stage two)."})
    lazy_preprocess: bool = False
    is_multimodal: bool = False
    early_mix_text: bool = False
    image_folder: str | None = field(default=None)
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: str | None = field(default=None)
    image_crop_resolution: int | None = field(default=None)
    image_split_resolution: int | None = field(default=None)
    video_folder: str | None = field(
        default=None,
        metadata={"help": "Comma-separated trajectory source folders (annotations.json + images/)."},
    )
    video_fps: int | None = field(default=1)
    frames_upbound: int | None = field(default=0)
    add_time_instruction: bool | None = field(default=False)
    force_sample: bool | None = field(default=False)
    num_future_steps: int | None = field(default=1, metadata={"help": "Actions per turn (StreamVLN: 4)."})
    # The published parser's default equals StreamVLN's value (sample_shape.py), so it is not written twice.
    num_frames: int | None = field(
        default=STREAMVLN_SHAPE.num_frames, metadata={"help": "Steps per sample (StreamVLN: 32)."}
    )
    num_history: int | None = field(default=None, metadata={"help": "History frames (StreamVLN: 8)."})
    data_augmentation: bool | None = field(default=False)
    transform_train: str | None = field(default=None)
    image_size: int | None = field(default=384)
    remove_init_turns: bool | None = field(default=False)
    # Stage-two flags of the published training script.
    mmc4_video_folder: str | None = field(default=None)
    scanqa_video_folder: str | None = field(default=None)
    qa_video_folder: str | None = field(default=None)
    multi_task_training: bool | None = field(default=False)
    data_index: str | None = field(
        default=None,
        metadata={
            "help": "(ours) Prebuilt Arrow sample index written by the flow; skips scanning the folders."
        },
    )
    max_invalid_fraction: float = field(
        default=0.0,
        metadata={
            "help": "(ours) Share of samples with data problems that may be skipped and quarantined "
            "(listed in the validation report); 0 = any problem fails the run before training."
        },
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=False)
    freeze_mm_vision_resampler: bool = field(default=False)
    mpt_attn_impl: str | None = field(default="triton")
    model_max_length: int = field(
        default=4096, metadata={"help": "Maximum spliced sequence length (StreamVLN: 32768)."}
    )
    double_quant: bool = field(default=True)
    quant_type: str = field(default="nf4")
    bits: int = field(default=16)
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_target_modules: str = "q_proj,v_proj"
    lora_bias: str = "none"
    mm_projector_lr: float | None = None
    mm_vision_tower_lr: float | None = None
    group_by_varlen: bool = field(default=False)
    group_by_modality_length: bool = field(default=False)
    group_by_modality_length_auto: bool = field(default=False)
    group_by_task: bool = field(default=False)
    auto_find_batch_size: bool = field(default=False)
    gradient_checkpointing: bool = field(default=True)
    verbose_logging: bool = field(default=False)
    attn_implementation: str = field(
        default="flash_attention_2",
        metadata={
            "help": "flash_attention_2 (published default; sdpa where flash-attn/CUDA is absent), sdpa "
            "or eager."
        },
    )
    loss_per_micro_batch: bool = field(
        default=False,
        metadata={
            "help": "(ours) Average the loss per micro-batch, then over accumulation steps, as "
            "transformers 4.45 (the published code) did. Default: one mean over all label tokens "
            "of the accumulated batch."
        },
    )
    gpu_memory_gb: float | None = field(
        default=None,
        metadata={
            "help": "(ours) Memory of one GPU in GiB (e.g. 80). Preflight then predicts the per-GPU peak "
            "of this run (parameters, gradients, optimizer states, activations) and refuses a run that "
            "cannot fit, naming the cheapest change that fits. Unset: no verdict."
        },
    )
    # transformers 4.x flags the published scripts pass; transformers 5 renamed or removed them.
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Published alias of eval_strategy (removed from transformers 5)."}
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={"help": "Share of the steps used for warmup (transformers 5: a ratio in warmup_steps)."},
    )

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None and 0 <= self.warmup_ratio < 1:
            self.warmup_steps = self.warmup_ratio  # out-of-range ratios are reported by preflight
        with _machine_checks_deferred(self):
            super().__post_init__()


class _machine_checks_deferred:
    """Parse a GPU recipe on a host without that GPU (the flow's planning host, this CPU machine).

    transformers 5 refuses `--bf16 True` without a bf16 GPU unless `use_cpu`, and `--tf32 True`
    without an Ampere GPU, while parsing. Whether the launch machine has them is preflight's
    question (`preflight.machine_problems`), asked against the launch device; parsing itself
    must resolve the same values on every host, so these checks are skipped here and the
    requested values kept. Likewise `--deepspeed` where the deepspeed package is absent (the flow
    host need not have it): preflight reports it as a missing package.
    """

    def __init__(self, args: TrainingArguments):
        self.args = args
        self.tf32 = args.tf32
        self.use_cpu, self.pin_memory = args.use_cpu, args.dataloader_pin_memory
        self.mask_bf16 = bool(args.bf16 and not args.use_cpu and not is_torch_bf16_gpu_available())
        self.mask_tf32 = bool(args.tf32 and not is_torch_tf32_available())
        self.deepspeed = args.deepspeed
        self.mask_deepspeed = bool(args.deepspeed) and importlib.util.find_spec("deepspeed") is None

    def __enter__(self) -> None:
        if self.mask_tf32:
            self.args.tf32 = None
        if self.mask_bf16:
            self.args.use_cpu = True
        if self.mask_deepspeed:
            self.args.deepspeed = None

    def __exit__(self, *exc) -> None:
        if self.mask_tf32:
            self.args.tf32 = self.tf32
        if self.mask_bf16:
            self.args.use_cpu, self.args.dataloader_pin_memory = self.use_cpu, self.pin_memory
        if self.mask_deepspeed:
            self.args.deepspeed = self.deepspeed


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)
GROUPS = ("model", "data", "training")


@dataclass
class Arguments:
    """The three parsed dataclasses, resolved from flags only (no host-dependent decisions)."""

    model: ModelArguments
    data: DataArguments
    training: TrainingArguments
    # The flags the run named (the rest are defaults): a published default the machine cannot
    # honour is substituted, a flag asked for explicitly is not.
    given: frozenset[str] = frozenset()

    def as_tuple(self) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
        return self.model, self.data, self.training

    def __iter__(self):
        """`model_args, data_args, training_args = arguments`, like HfArgumentParser's tuple."""
        return iter(self.as_tuple())


def parser() -> transformers.HfArgumentParser:
    # The published flag name; transformers 5 maps it to activation_checkpointing and warns each parse.
    warnings.filterwarnings(
        "ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning
    )
    # No abbreviations: a truncated or misspelled flag is an error, not a prefix match.
    return transformers.HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False)


def field_names() -> dict[str, str]:
    """Flag name -> group ("model", "data", "training") for every field of the three dataclasses."""
    return {f.name: group for group, cls in zip(GROUPS, ARGUMENT_CLASSES, strict=True) for f in _fields(cls)}


def _fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def default_of(name: str) -> Any:
    """The declared default of a flag (the one source of truth the flow's form defers to)."""
    for cls in ARGUMENT_CLASSES:
        for f in _fields(cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                return f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    raise KeyError(name)


def help_of(name: str) -> str | None:
    for cls in ARGUMENT_CLASSES:
        for f in _fields(cls):
            if f.name == name:
                return f.metadata.get("help")
    raise KeyError(name)


def unknown_flags(flags: dict[str, Any]) -> list[str]:
    """Keys that name no field, each with the closest known flag as the fix."""
    import difflib

    known = field_names()
    problems = []
    for key in flags:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see docs/ARGUMENTS.md for the flags"
            problems.append(f"{key!r}: unknown flag. Fix: {hint}")
    return problems


def resolve_flags(flags: dict[str, Any]) -> Arguments:
    """Flag name -> value (typed or string) into the three dataclasses, as HfArgumentParser does."""
    from streamvln_model.config.errors import FlagError

    problems = unknown_flags(flags)
    if problems:
        raise FlagError(problems)
    try:
        return Arguments(*parser().parse_dict(flags, allow_extra_keys=False), given=frozenset(flags))
    except (ValueError, TypeError) as err:
        raise FlagError([f"arguments: {err}"]) from err


def resolve_argv(argv: list[str]) -> Arguments:
    """A command line (`--flag value ...`) into the three dataclasses, unknown flags refused."""
    model_args, data_args, training_args, rest = parser().parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if rest:
        from streamvln_model.config.errors import FlagError

        raise FlagError([f"command line: unknown argument(s) {' '.join(rest)}"])
    given = frozenset(a[2:].split("=", 1)[0] for a in argv if a.startswith("--"))
    return Arguments(model_args, data_args, training_args, given=given)


def as_data(arguments: Arguments) -> dict[str, dict[str, Any]]:
    """JSON-ready resolved values, one dict per group; secrets masked (see secrets.py)."""
    from streamvln_model.config.secrets import mask_secrets

    return {
        "model": _jsonable(dataclasses.asdict(arguments.model)),
        "data": _jsonable(dataclasses.asdict(arguments.data)),
        "training": mask_secrets(_jsonable(arguments.training.to_dict())),
    }


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """What JSON keeps of the values (str enums as their value, tuples as lists, objects as text),
    so a resolution compares equal to the same resolution read back from plan.json."""
    return json.loads(json.dumps(values, default=str))
