"""What every published flag does here: implemented, refused for now, or without effect.

Every field of the three argument dataclasses has exactly one state:

* ``implemented`` - it has its published meaning. Some accept only the values StreamVLN can use
  (``supported``); any other value is refused with the reason, never silently changed.
* ``refused`` - any value other than the default is refused by preflight, naming the later work
  that will bring it (so nothing that would change training is accepted and ignored).
* ``no_effect`` - accepted because the published code does not use it either (the note says why).

Fields inherited from ``transformers.TrainingArguments`` are implemented by the transformers
Trainer unless listed here. docs/ARGUMENTS.md is generated from this table
(``python -m streamvln_model.config.field_status > docs/ARGUMENTS.md``) and a test keeps them equal.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from streamvln_model.config.arguments import ARGUMENT_CLASSES, GROUPS, Arguments, default_of

NOT_PLANNED = "not part of the StreamVLN recipe (no issue plans it)"

State = Literal["implemented", "refused", "no_effect"]


@dataclass(frozen=True)
class FieldStatus:
    state: State
    note: str
    supported: Callable[[Any], bool] | None = None  # implemented fields that accept only some values

    def problem(self, name: str, value: Any) -> str | None:
        """Why this value cannot run, or None."""
        if self.state == "refused" and value != default_of(name):
            return f"--{name}={value!r}: not supported yet; it comes with {self.note}"
        if self.state == "implemented" and self.supported is not None and not self.supported(value):
            return f"--{name}={value!r}: {self.note}"
        return None


def implemented(note: str, supported: Callable[[Any], bool] | None = None) -> FieldStatus:
    return FieldStatus("implemented", note, supported)


def refused(area: str) -> FieldStatus:
    return FieldStatus("refused", area)


def no_effect(why: str) -> FieldStatus:
    return FieldStatus("no_effect", why)


RESAMPLER_ONLY = no_effect("only read by LLaVA-NeXT's vision resamplers, which StreamVLN does not use")

STATUS: dict[str, FieldStatus] = {
    # ---- ModelArguments ------------------------------------------------------------------
    "model_name_or_path": implemented(
        "must be a local checkpoint folder (nothing is downloaded at run time)",
    ),
    "tokenizer_name_or_path": implemented("our addition: a tokenizer folder other than the checkpoint's"),
    "model_class_name": no_effect(
        "StreamVLN always builds StreamVLNForCausalLM; the published code never reads it"
    ),
    "mm_tunable_parts": implemented("parts to train; overrides the older freezing flags, as published"),
    "version": implemented(
        "only the qwen_1_5 conversation template is implemented (the one StreamVLN trains with; the "
        "published default v0 is LLaVA's). Fix: --version qwen_1_5",
        supported=lambda v: v == "qwen_1_5",
    ),
    "freeze_backbone": implemented(
        "freezes everything under `model.` (lm_head stays trainable), as published"
    ),
    "tune_mm_mlp_adapter": implemented(
        "train the projector only (plus the tower with unfreeze_mm_vision_tower)"
    ),
    "tune_mm_vision_resampler": implemented(
        "freezes the model as published; StreamVLN has no resampler, so only the tower can train "
        "(with unfreeze_mm_vision_tower)"
    ),
    "vision_tower": no_effect(
        "the published trainer builds a tower from it only when the checkpoint has none; StreamVLN "
        "checkpoints carry the tower and its weights are loaded from the checkpoint"
    ),
    "vision_tower_pretrained": no_effect("written into the config by LLaVA-NeXT, never used to load weights"),
    "unfreeze_mm_vision_tower": implemented("trains the vision tower (legacy flags only)"),
    "unfreeze_language_model": no_effect("declared but never read by the published code"),
    "mm_vision_select_layer": implemented(
        "index into the full SigLIP tower's hidden states (-2: the penultimate layer StreamVLN uses)",
    ),
    "pretrain_mm_mlp_adapter": refused(
        "the training-options work (projector-only saves and loads; "
        "issue 'Fit the real model on real hardware')"
    ),
    "mm_projector_type": implemented(
        "must name the checkpoint's projector: StreamVLN checkpoints hold mlp2x_gelu, and the published "
        "trainer writes this flag into the saved config (the published default 'linear' would save a config "
        "that no longer matches the weights). Fix: --mm_projector_type mlp2x_gelu",
        supported=lambda v: v == "mlp2x_gelu",
    ),
    "mm_use_im_start_end": implemented(
        "True adds <im_start>/<im_end> tokens and changes the prompts; StreamVLN passes False. "
        "Fix: --mm_use_im_start_end False",
        supported=lambda v: not v,
    ),
    "mm_use_im_patch_token": implemented(
        "True (the published default) adds an unused <im_patch> token and resizes the embedding matrix "
        "to the "
        "tokenizer length; StreamVLN passes False. Fix: --mm_use_im_patch_token False",
        supported=lambda v: not v,
    ),
    "mm_patch_merge_type": implemented(
        "written into the config as published; without 'unpad' the model has no image_newline (unused by "
        "navigation)"
    ),
    "mm_vision_select_feature": implemented(
        "patch and cls_patch are the same for SigLIP (it has no CLS token)",
        supported=lambda v: v in ("patch", "cls_patch"),
    ),
    "mm_resampler_type": refused(NOT_PLANNED),
    "mm_mask_drop_mode": RESAMPLER_ONLY,
    "mm_mask_drop_skip_percentage": RESAMPLER_ONLY,
    "mm_mask_drop_ratio": RESAMPLER_ONLY,
    "mm_mask_drop_ratio_upper": RESAMPLER_ONLY,
    "mm_mask_drop_ratio_lower": RESAMPLER_ONLY,
    "mm_spatial_pool_stride": implemented(
        "pooling stride of the frame tokens; unset keeps the checkpoint's (2)"
    ),
    "mm_spatial_pool_size": no_effect(
        "StreamVLN's frame pooling is set by the stride; the size is never read"
    ),
    "mm_spatial_pool_mode": implemented(
        "bilinear (published default), average or max",
        supported=lambda v: v in ("bilinear", "average", "max"),
    ),
    "mm_spatial_pool_out_channels": RESAMPLER_ONLY,
    "mm_perceiver_depth": RESAMPLER_ONLY,
    "mm_perceiver_latents": RESAMPLER_ONLY,
    "mm_perceiver_ff_mult": RESAMPLER_ONLY,
    "mm_perceiver_pretrained": RESAMPLER_ONLY,
    "mm_qformer_depth": RESAMPLER_ONLY,
    "mm_qformer_latents": RESAMPLER_ONLY,
    "mm_qformer_pretrained": RESAMPLER_ONLY,
    "rope_scaling_factor": implemented("with rope_scaling_type: RoPE scaling written into the config"),
    "rope_scaling_type": implemented("with rope_scaling_factor: RoPE scaling written into the config"),
    "s2": refused(NOT_PLANNED),
    "s2_scales": no_effect("only read by the S2 tower wrapper (--s2, refused)"),
    "use_pos_skipping": refused(NOT_PLANNED),
    "pos_skipping_range": no_effect("only read with --use_pos_skipping (refused)"),
    "mm_newline_position": implemented(
        "written into the config as published; navigation samples add no newline tokens"
    ),
    "delay_load": no_effect("lazy tower loading in LLaVA-NeXT; our tower loads with the checkpoint"),
    "add_faster_video": refused(NOT_PLANNED),
    "faster_token_stride": no_effect("only read with --add_faster_video (refused)"),
    # ---- DataArguments -------------------------------------------------------------------
    "data_path": implemented(
        "the stage-two YAML mixture (QA, ScanQA, MMC4 groups; docs/DATA_FORMATS.md); local or s3://"
    ),
    "lazy_preprocess": no_effect("samples are always built lazily; the published code never reads it"),
    "is_multimodal": no_effect("the published trainer sets it to True itself once the tower is set up"),
    "early_mix_text": no_effect("never read by the navigation dataset"),
    "image_folder": no_effect("LLaVA image data only; the navigation dataset reads video_folder"),
    "image_aspect_ratio": no_effect(
        "written into the config; navigation frames are resized to the tower's square input, as published"
    ),
    "image_grid_pinpoints": no_effect(
        "anyres grids are only used by LLaVA image data, not navigation frames"
    ),
    "image_crop_resolution": no_effect("LLaVA image data only"),
    "image_split_resolution": no_effect("LLaVA image data only"),
    "video_folder": implemented("comma-separated trajectory source folders"),
    "video_fps": implemented("video QA: frames sampled at this rate unless force_sample"),
    "frames_upbound": implemented("video QA and ScanQA: at most this many frames per sample"),
    "add_time_instruction": implemented("video QA: the published duration/timestamps preamble"),
    "force_sample": implemented("video QA: always sample exactly frames_upbound frames uniformly"),
    "num_future_steps": implemented("actions per turn; current frames every num_future_steps steps"),
    "num_frames": implemented("steps per sample (chunk length)"),
    "num_history": implemented("history frames per sample; must divide num_frames"),
    "data_augmentation": implemented(
        "navigation frames: the published colour jitter, posterize, sharpness, autocontrast (seeded)"
    ),
    "transform_train": no_effect("declared but never read by the published dataset"),
    "image_size": no_effect("frames are resized to the vision tower's own resolution (published: fixed 384)"),
    "remove_init_turns": implemented(
        "navigation: leading turns the instruction does not mention are dropped (docs/DATA_FORMATS.md)"
    ),
    "mmc4_video_folder": implemented("root of the MMC4 images (local or s3://)"),
    "scanqa_video_folder": implemented("root of the ScanNet posed_images folders (local or s3://)"),
    "qa_video_folder": implemented("root of the video QA videos and frame folders (local or s3://)"),
    "multi_task_training": implemented(
        "train on --data_path's co-training groups beside the navigation data"
    ),
    "data_index": implemented("our addition: the flow's validated Arrow index (skips scanning)"),
    "max_invalid_fraction": implemented(
        "our addition: skip and quarantine at most this share of bad samples"
    ),
    # ---- TrainingArguments (published additions) ----------------------------------------
    "cache_dir": no_effect("hub download cache; checkpoints are local folders"),
    "remove_unused_columns": implemented(
        "must stay False: the collator needs every field of a sample", supported=lambda v: not v
    ),
    "freeze_mm_mlp_adapter": implemented("freezes the projector (legacy flags only)"),
    "freeze_mm_vision_resampler": no_effect("StreamVLN has no resampler parameters to freeze"),
    "mpt_attn_impl": no_effect("MPT language models only"),
    "model_max_length": implemented("spliced sequences are truncated to it (tokenizer_model_max_length)"),
    "double_quant": implemented("with --bits 4: also quantize the quantization constants (bnb double quant)"),
    "quant_type": implemented(
        "with --bits 4: the 4-bit data type, nf4 or fp4", supported=lambda v: v in ("nf4", "fp4")
    ),
    "bits": implemented(
        "4 or 8: the LLM's linear layers load quantized with bitsandbytes (tower, projector and lm_head "
        "stay in full precision), then k-bit training preparation; needs --lora_enable (QLoRA). "
        "16 (default) or 32: no quantization. See docs/TRAINING_OPTIONS.md",
        supported=lambda v: v in (4, 8, 16, 32),
    ),
    "lora_enable": implemented(
        "LoRA on every linear layer of the LLM (not the tower, projector or lm_head); with "
        "--mm_tunable_parts the LoRA layers train only with mm_lora_layer (or mm_language_model), as "
        "published. Saves the "
        "adapter plus the other trained weights. See docs/TRAINING_OPTIONS.md"
    ),
    "lora_r": implemented("LoRA rank", supported=lambda v: isinstance(v, int) and v > 0),
    "lora_alpha": implemented("LoRA scale numerator (scale: lora_alpha / lora_r)", supported=lambda v: v > 0),
    "lora_dropout": implemented("dropout on the LoRA input", supported=lambda v: 0 <= v < 1),
    "lora_weight_path": implemented(
        "our meaning (the published script never reads it): an earlier adapter (its output_dir or "
        "adapter_model.safetensors) loaded into the new LoRA layers before training"
    ),
    "lora_target_modules": no_effect("never read: published LoRA targets every linear layer of the LLM"),
    "lora_bias": implemented(
        "which biases the adapter trains and saves: none, all or lora_only",
        supported=lambda v: v in ("none", "all", "lora_only"),
    ),
    "mm_projector_lr": implemented("learning rate of parameters named mm_projector"),
    "mm_vision_tower_lr": implemented("learning rate of parameters named vision_tower"),
    "group_by_varlen": refused(NOT_PLANNED),
    "group_by_modality_length": refused(NOT_PLANNED),
    "group_by_modality_length_auto": refused(NOT_PLANNED),
    "group_by_task": implemented("batches never mix tasks (per-task megabatches, shuffled)"),
    "auto_find_batch_size": implemented("transformers' batch-size search"),
    "gradient_checkpointing": implemented("on by default, as published; input embeddings then require grad"),
    "verbose_logging": implemented("rank 0 logs the resolved arguments"),
    "attn_implementation": implemented(
        "flash_attention_2 needs flash-attn on CUDA (else sdpa is substituted and logged), sdpa or eager",
        supported=lambda v: v in ("flash_attention_2", "sdpa", "eager"),
    ),
    "loss_per_micro_batch": implemented(
        "our addition: restores the published (transformers 4.45) per-micro-batch loss averaging"
    ),
    "gpu_memory_gb": implemented(
        "our addition: GiB of one GPU; preflight refuses a run whose predicted per-GPU peak does not fit "
        "and names the cheapest change that does (streamvln_model/training/memory, docs/PERFORMANCE.md)"
    ),
    "evaluation_strategy": implemented("transformers 4 name of eval_strategy (mapped)"),
    "warmup_ratio": implemented("warmup share of the steps (transformers 5 takes it in warmup_steps)"),
    # ---- transformers.TrainingArguments fields with a project-specific rule ----------------
    "hub_token": implemented(
        "a secret: moved to HF_TOKEN in the worker's environment, never written to a file"
    ),
    "tf32": implemented("used where the GPU supports it; elsewhere disabled and the substitution logged"),
    "bf16": implemented("loads the weights in bf16, as published"),
    "fp16": implemented(
        "fp32 master weights under fp16 autocast, as published (weights are not loaded in fp16)"
    ),
    "use_cpu": implemented("set by the launch device (flow) or when the host has no CUDA device (worker)"),
    "deepspeed": implemented(
        "a DeepSpeed JSON (configs/deepspeed/: zero2 as published, zero3, zero3_offload); preflight refuses "
        "one that cannot save a loadable model (ZeRO-3 without the 16-bit gather) or would drop "
        "--mm_projector_lr/--mm_vision_tower_lr (an optimizer section), and --deepspeed with --fsdp; "
        "under ZeRO-3 the weights are partitioned as they load. See docs/DISTRIBUTED.md"
    ),
    "fsdp": implemented(
        "FSDP2 instead of DeepSpeed, with --fsdp_config (configs/fsdp.json: full shard, one unit per "
        "decoder/encoder layer); also on a CPU host (gloo). See docs/DISTRIBUTED.md"
    ),
    "fsdp_config": implemented(
        "FSDP options (JSON file or dict); state_dict_type must be FULL_STATE_DICT, the final save needs "
        "the whole model"
    ),
    "resume_from_checkpoint": no_effect(
        "the published trainer never reads it: it resumes from the newest checkpoint-* in output_dir, as here"
    ),
    "do_train": no_effect(
        "transformers' scripts flag; the Trainer does not read it, nor does the published code"
    ),
    "do_eval": no_effect(
        "transformers' scripts flag; the Trainer does not read it, nor does the published code"
    ),
    "do_predict": no_effect(
        "transformers' scripts flag; the Trainer does not read it, nor does the published code"
    ),
    "optim": implemented("the transformers optimizer name; preflight checks the package an optimizer needs"),
}

INHERITED = implemented("implemented by the transformers Trainer (transformers 5 semantics)")


def status_of(name: str) -> FieldStatus:
    if name in STATUS:
        return STATUS[name]
    if name in {f.name for f in dataclasses.fields(ARGUMENT_CLASSES[2])}:
        return INHERITED
    raise KeyError(f"{name}: no status recorded; add it to streamvln_model/config/field_status.py")


def declared_fields() -> list[tuple[str, str]]:
    """(group, field) for every field the three dataclasses declare, in declaration order."""
    return [
        (group, f.name)
        for group, cls in zip(GROUPS, ARGUMENT_CLASSES, strict=True)
        for f in dataclasses.fields(cls)
        if f.init
    ]


def field_problems(arguments: Arguments) -> list[str]:
    """Every refused or unsupported value at once."""
    problems = []
    for group, name in declared_fields():
        problem = status_of(name).problem(name, getattr(getattr(arguments, group), name))
        if problem:
            problems.append(problem)
    return problems


def markdown_table() -> str:
    """docs/ARGUMENTS.md: one row per field, generated so it cannot drift from the code."""
    lines = [
        "# Arguments: what each published flag does here",
        "",
        "Generated by `python -m streamvln_model.config.field_status > docs/ARGUMENTS.md` from",
        "`streamvln_model/config/field_status.py`; a test keeps this file equal to the code. "
        "Defaults are the",
        "published parser's (InternRobotics/StreamVLN `streamvln/args.py` and its training script).",
        "",
        "States: **implemented** (the published meaning; some accept only the values StreamVLN can use),",
        "**refused** (a non-default value stops the run in preflight and names the work that brings it),",
        "**no effect** (accepted; the published code does not use it either).",
        "",
    ]
    inherited_shown = False
    for group, cls in zip(GROUPS, ARGUMENT_CLASSES, strict=True):
        lines += [f"## {cls.__name__}", "", "| flag | default | state | note |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.name not in STATUS and group == "training":
                inherited_shown = True
                continue
            status = status_of(f.name)
            note = status.note.replace("|", "\\|")
            lines.append(
                f"| `{f.name}` | `{default_of(f.name)!r}` | {status.state.replace('_', ' ')} | {note} |"
            )
        lines.append("")
    if inherited_shown:
        lines += [
            "Every other `transformers.TrainingArguments` field: implemented by the transformers Trainer",
            "(transformers 5 names and semantics).",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
