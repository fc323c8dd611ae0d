"""The three argument dataclasses, with the published StreamVLN flag names.

`torchrun -m streamvln_model.train` accepts the published command lines unchanged. Flags that only
matter to LLaVA-NeXT features StreamVLN does not use (resamplers, S2, faster-video, ...) are
accepted for compatibility and ignored; `UNSUPPORTED` lists the ones that would change training
and are refused up front rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local checkpoint folder (LLaVA layout)."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer folder; defaults to model_name_or_path."}
    )
    model_class_name: str | None = None
    mm_tunable_parts: str | None = field(
        default=None,
        metadata={
            "help": "Comma list of mm_mlp_adapter, mm_vision_resampler, mm_vision_tower, mm_language_model."
        },
    )
    version: str = "qwen_1_5"
    freeze_backbone: bool = False
    tune_mm_mlp_adapter: bool = False
    tune_mm_vision_resampler: bool = False
    vision_tower: str | None = None
    vision_tower_pretrained: str | None = None
    unfreeze_mm_vision_tower: bool = False
    unfreeze_language_model: bool = False
    mm_vision_select_layer: int = -2
    pretrain_mm_mlp_adapter: str | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    mm_patch_merge_type: str | None = None
    mm_vision_select_feature: str = "patch"
    mm_resampler_type: str | None = None
    mm_mask_drop_mode: str = "fixed"
    mm_mask_drop_skip_percentage: float = 0.0
    mm_mask_drop_ratio: float = 0.25
    mm_mask_drop_ratio_upper: float | None = None
    mm_mask_drop_ratio_lower: float | None = None
    mm_spatial_pool_stride: int | None = None
    mm_spatial_pool_size: int | None = None
    mm_spatial_pool_mode: str | None = None
    mm_spatial_pool_out_channels: int | None = None
    mm_perceiver_depth: int = 3
    mm_perceiver_latents: int = 32
    mm_perceiver_ff_mult: float = 4
    mm_perceiver_pretrained: str | None = None
    mm_qformer_depth: int = 3
    mm_qformer_latents: int = 32
    mm_qformer_pretrained: str | None = None
    rope_scaling_factor: float | None = None
    rope_scaling_type: str | None = None
    s2: bool = False
    s2_scales: str = "336,672,1008"
    use_pos_skipping: bool = False
    pos_skipping_range: int = 4096
    mm_newline_position: str | None = None
    delay_load: bool = True
    add_faster_video: bool = False
    faster_token_stride: int = 10


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={"help": "Co-training YAML (stage two)."})
    video_folder: str | None = field(
        default=None, metadata={"help": "Comma-separated trajectory source folders."}
    )
    data_index: str | None = field(
        default=None, metadata={"help": "Prebuilt Arrow sample index (written by the flow); skips scanning."}
    )
    lazy_preprocess: bool = False
    is_multimodal: bool = False
    early_mix_text: bool = False
    image_folder: str | None = None
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: str | None = None
    image_crop_resolution: int | None = None
    image_split_resolution: int | None = None
    video_fps: int = 1
    frames_upbound: int = 0
    add_time_instruction: bool = False
    force_sample: bool = False
    num_future_steps: int = 4
    num_frames: int = 32
    num_history: int | None = 8
    data_augmentation: bool = False
    transform_train: str | None = None
    image_size: int = 384
    remove_init_turns: bool = False


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = None
    optim: str = "adamw_torch"
    remove_unused_columns: bool = False
    freeze_mm_mlp_adapter: bool = False
    freeze_mm_vision_resampler: bool = False
    mpt_attn_impl: str | None = "triton"
    model_max_length: int = field(default=4096, metadata={"help": "Maximum spliced sequence length."})
    double_quant: bool = True
    quant_type: str = "nf4"
    bits: int = 16
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_target_modules: str = "q_proj,v_proj"
    lora_bias: str = "none"
    mm_projector_lr: float | None = None
    mm_vision_tower_lr: float | None = None
    group_by_varlen: bool = False
    group_by_modality_length: bool = False
    group_by_modality_length_auto: bool = False
    group_by_task: bool = False
    verbose_logging: bool = False
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "sdpa (default), eager or flash_attention_2 (GPU only)."}
    )
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Published alias of eval_strategy (removed from transformers 5)."}
    )

    warmup_ratio: float | None = field(
        default=None, metadata={"help": "Published flag; transformers 5 takes a ratio in warmup_steps (< 1)."}
    )

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()


# flag -> (is it set?, why it is refused for now)
UNSUPPORTED = {
    "lora_enable": (lambda m, d, t: t.lora_enable, "LoRA training is not supported yet"),
    "bits": (lambda m, d, t: t.bits not in (16, 32), "4/8-bit quantised training is not supported yet"),
    "data_path": (
        lambda m, d, t: bool(d.data_path),
        "co-training data (--data_path YAML) is not supported yet",
    ),
    "data_augmentation": (lambda m, d, t: d.data_augmentation, "--data_augmentation is not supported yet"),
    "remove_init_turns": (lambda m, d, t: d.remove_init_turns, "--remove_init_turns is not supported yet"),
    "group_by_task": (lambda m, d, t: t.group_by_task, "--group_by_task needs co-training data (not yet)"),
    "version": (lambda m, d, t: m.version != "qwen_1_5", "only --version qwen_1_5 is supported"),
}


def parser() -> transformers.HfArgumentParser:
    return transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
