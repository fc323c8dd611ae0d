"""The published StreamVLN command lines, verbatim, resolve here to what the published parser gives.

The two worker command lines below are the training scripts of InternRobotics/StreamVLN
(`scripts/streamvln_train_slurm.sh` stage one, and its stage-two version), copied as text; only
the shell variables are filled with local paths (and the DeepSpeed JSON points at ours). The
expected values are written by hand from the published dataclasses (`streamvln/args.py`) and the
scripts, not computed by the code under test.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from string import Template

import pytest

from streamvln_model.config.arguments import resolve_argv
from streamvln_model.config.field_status import (
    STATUS,
    declared_fields,
    field_problems,
    markdown_table,
    status_of,
)
from streamvln_model.training.worker import PER_PROCESS_FIELDS
from tests.conftest import REPO_ROOT

STAGE_ONE = r"""
    --deepspeed scripts/zero2.json \
    --model_name_or_path $PREV_STAGE_CHECKPOINT \
    --version $PROMPT_VERSION \
    --video_folder ${VIDEO_FOLDER} \
    --group_by_task False \
    \
    --num_history 8 \
    --num_future_steps 4 \
    --num_frames 32 \
    --data_augmentation True \
    \
    --mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model" \
    --vision_tower ${VISION_MODEL_VERSION} \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio anyres_max_9 \
    --image_grid_pinpoints  "(1x1),...,(6x6)" \
    --bf16 True \
    --run_name $MID_RUN_NAME \
    --output_dir checkpoints/$MID_RUN_NAME \
    --num_train_epochs 1 \
    --per_device_train_batch_size 1 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "epoch" \
    --save_total_limit 1 \
    --learning_rate 2e-5 \
    --mm_vision_tower_lr 5e-6 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "constant_with_warmup" \
    --logging_steps 10 \
    --tf32 True \
    --model_max_length 32768 \
    --gradient_checkpointing True \
    --dataloader_num_workers 8 \
    --lazy_preprocess True \
    --torch_compile True \
    --torch_compile_backend "inductor" \
    --dataloader_drop_last True \
    --report_to wandb \
"""

STAGE_TWO = r"""
    --deepspeed scripts/zero2.json \
    --model_name_or_path $PREV_STAGE_CHECKPOINT \
    --version $PROMPT_VERSION \
    --video_folder ${VIDEO_FOLDER} \
    --mmc4_video_folder ${MMC4_VIDEO_FOLDER} \
    --scanqa_video_folder ${SCANQA_VIDEO_FOLDER} \
    --qa_video_folder ${QA_VIDEO_FOLDER} \
    --group_by_task True \
    --multi_task_training True \
    \
    --num_history 8 \
    --num_future_steps 4 \
    --num_frames 32 \
    --data_augmentation True \
    --data_path "config/co-training_data.yaml" \
    \
    --mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model" \
    --vision_tower ${VISION_MODEL_VERSION} \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio anyres_max_9 \
    --frames_upbound 32 \
    --force_sample True \
    --add_time_instruction True \
    --image_grid_pinpoints  "(1x1),...,(6x6)" \
    --bf16 True \
    --run_name $MID_RUN_NAME \
    --output_dir checkpoints/$MID_RUN_NAME \
    --num_train_epochs 1 \
    --per_device_train_batch_size 2 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 2 \
    --evaluation_strategy "no" \
    --save_strategy "epoch" \
    --save_total_limit 1 \
    --learning_rate 2e-5 \
    --mm_vision_tower_lr 5e-6 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 10 \
    --tf32 True \
    --model_max_length 32768 \
    --gradient_checkpointing True \
    --dataloader_num_workers 8 \
    --lazy_preprocess True \
    --torch_compile True \
    --torch_compile_backend "inductor" \
    --dataloader_drop_last True \
    --report_to wandb \
"""

DEEPSPEED = str(REPO_ROOT / "configs" / "deepspeed" / "zero2.json")
VARIABLES = {
    "PREV_STAGE_CHECKPOINT": "checkpoints/LLaVA-Video-7B-Qwen2",
    "PROMPT_VERSION": "qwen_1_5",
    "VIDEO_FOLDER": "data/trajectory_data/R2R,data/trajectory_data/RxR,data/trajectory_data/EnvDrop",
    "VISION_MODEL_VERSION": "google/siglip-so400m-patch14-384",
    "MID_RUN_NAME": "StreamVLN_Video_qwen_1_5_1epoch_196token_8history_32frame",
    "MMC4_VIDEO_FOLDER": "data/co-training_data/MMC4-core/images",
    "SCANQA_VIDEO_FOLDER": "data/co-training_data/ScanNet",
    "QA_VIDEO_FOLDER": "data/co-training_data/LLaVA-Video-178K",
}


def worker_argv(script: str) -> list[str]:
    """The script's worker flags as the shell would pass them, with our paths filled in."""
    text = Template(script.replace("\\\n", " ")).substitute(VARIABLES)
    return [DEEPSPEED if arg == "scripts/zero2.json" else arg for arg in shlex.split(text)]


# Published parser values shared by both stages: the dataclass defaults of streamvln/args.py
# (for flags the scripts do not pass) and the scripts' values.
COMMON = {
    # ModelArguments
    "model_name_or_path": VARIABLES["PREV_STAGE_CHECKPOINT"],
    "model_class_name": None,
    "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
    "version": "qwen_1_5",
    "freeze_backbone": False,
    "tune_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "vision_tower": VARIABLES["VISION_MODEL_VERSION"],
    "vision_tower_pretrained": None,
    "unfreeze_mm_vision_tower": False,
    "unfreeze_language_model": False,
    "mm_vision_select_layer": -2,
    "pretrain_mm_mlp_adapter": None,
    "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "mm_patch_merge_type": "flat",
    "mm_vision_select_feature": "patch",
    "mm_resampler_type": None,
    "mm_mask_drop_mode": "fixed",
    "mm_mask_drop_skip_percentage": 0.0,
    "mm_mask_drop_ratio": 0.25,
    "mm_mask_drop_ratio_upper": None,
    "mm_mask_drop_ratio_lower": None,
    "mm_spatial_pool_stride": None,
    "mm_spatial_pool_size": None,
    "mm_spatial_pool_mode": "bilinear",
    "mm_spatial_pool_out_channels": None,
    "mm_perceiver_depth": 3,
    "mm_perceiver_latents": 32,
    "mm_perceiver_ff_mult": 4,
    "mm_perceiver_pretrained": None,
    "mm_qformer_depth": 3,
    "mm_qformer_latents": 32,
    "mm_qformer_pretrained": None,
    "rope_scaling_factor": None,
    "rope_scaling_type": None,
    "s2": False,
    "s2_scales": "336,672,1008",
    "use_pos_skipping": False,
    "pos_skipping_range": 4096,
    "mm_newline_position": "grid",
    "delay_load": True,
    "add_faster_video": False,
    "faster_token_stride": 10,
    # DataArguments
    "lazy_preprocess": True,
    "is_multimodal": False,
    "early_mix_text": False,
    "image_folder": None,
    "image_aspect_ratio": "anyres_max_9",
    "image_grid_pinpoints": "(1x1),...,(6x6)",
    "image_crop_resolution": None,
    "image_split_resolution": None,
    "video_fps": 1,
    "num_future_steps": 4,
    "num_frames": 32,
    "num_history": 8,
    "data_augmentation": True,
    "transform_train": None,
    "image_size": 384,
    "remove_init_turns": False,
    # TrainingArguments: the published additions
    "cache_dir": None,
    "optim": "adamw_torch",
    "remove_unused_columns": False,
    "freeze_mm_mlp_adapter": False,
    "freeze_mm_vision_resampler": False,
    "mpt_attn_impl": "triton",
    "model_max_length": 32768,
    "double_quant": True,
    "quant_type": "nf4",
    "bits": 16,
    "lora_enable": False,
    "lora_r": 64,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_weight_path": "",
    "lora_target_modules": "q_proj,v_proj",
    "lora_bias": "none",
    "mm_projector_lr": None,
    "mm_vision_tower_lr": 5e-6,
    "group_by_varlen": False,
    "group_by_modality_length": False,
    "group_by_modality_length_auto": False,
    "auto_find_batch_size": False,
    "gradient_checkpointing": True,
    "verbose_logging": False,
    "attn_implementation": "flash_attention_2",
    # TrainingArguments: transformers fields the scripts set
    "deepspeed": DEEPSPEED,
    "bf16": True,
    "run_name": VARIABLES["MID_RUN_NAME"],
    "output_dir": f"checkpoints/{VARIABLES['MID_RUN_NAME']}",
    "num_train_epochs": 1.0,
    "per_device_eval_batch_size": 4,
    "eval_strategy": "no",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "learning_rate": 2e-5,
    "weight_decay": 0.0,
    "warmup_ratio": 0.03,
    "logging_steps": 10,
    "tf32": True,
    "dataloader_num_workers": 8,
    "torch_compile": True,
    "torch_compile_backend": "inductor",
    "dataloader_drop_last": True,
    "report_to": ["wandb"],
}
PUBLISHED = {
    "stage_one": {
        **COMMON,
        "video_folder": VARIABLES["VIDEO_FOLDER"],
        "data_path": None,
        "frames_upbound": 0,
        "force_sample": False,
        "add_time_instruction": False,
        "mmc4_video_folder": None,
        "scanqa_video_folder": None,
        "qa_video_folder": None,
        "multi_task_training": False,
        "group_by_task": False,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "constant_with_warmup",
    },
    "stage_two": {
        **COMMON,
        "video_folder": VARIABLES["VIDEO_FOLDER"],
        "data_path": "config/co-training_data.yaml",
        "frames_upbound": 32,
        "force_sample": True,
        "add_time_instruction": True,
        "mmc4_video_folder": VARIABLES["MMC4_VIDEO_FOLDER"],
        "scanqa_video_folder": VARIABLES["SCANQA_VIDEO_FOLDER"],
        "qa_video_folder": VARIABLES["QA_VIDEO_FOLDER"],
        "multi_task_training": True,
        "group_by_task": True,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "lr_scheduler_type": "cosine",
    },
}
SCRIPTS = {"stage_one": STAGE_ONE, "stage_two": STAGE_TWO}


def print_arguments(argv: list[str]) -> dict:
    """The worker module itself resolving a command line (`--print_arguments`), as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "streamvln_model.train", "--print_arguments", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_RUN_ID": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.processes  # the worker module in a subprocess
@pytest.mark.parametrize("stage", ["stage_one", "stage_two"])
def test_published_command_line_resolves_to_the_published_values(stage):
    resolved = print_arguments(worker_argv(SCRIPTS[stage]))
    flat = {k: v for group in resolved.values() for k, v in group.items()}
    expected = PUBLISHED[stage]
    different = {
        k: (flat.get(k, "<missing>"), v) for k, v in expected.items() if flat.get(k, "<missing>") != v
    }
    assert different == {}, different
    # Every field a published dataclass declares is in the table above (and so compared).
    declared = {name for group, name in declared_fields() if group != "training" or name in STATUS}
    ours = {
        "tokenizer_name_or_path",
        "data_index",
        "loss_per_micro_batch",
        "evaluation_strategy",
        "hub_token",
        "gpu_memory_gb",
        "max_invalid_fraction",
    }
    # transformers' own fields
    ours |= {"tf32", "bf16", "fp16", "use_cpu", "deepspeed", "fsdp", "fsdp_config", "warmup_ratio"}
    ours |= {"resume_from_checkpoint", "do_train", "do_eval", "do_predict"}
    assert declared - ours - set(expected) == set()


@pytest.mark.parametrize("stage", ["stage_one", "stage_two"])
def test_published_command_line_passes_the_field_checks(stage):
    """Every flag of both published scripts is implemented or has no effect: none is refused."""
    assert field_problems(resolve_argv(worker_argv(SCRIPTS[stage]))) == []


def test_every_field_has_one_state_and_the_docs_table_is_generated_from_them():
    for _, name in declared_fields():
        assert status_of(name).state in ("implemented", "refused", "no_effect")
    assert set(STATUS) <= {name for _, name in declared_fields()}, "a status for a flag that does not exist"
    assert (REPO_ROOT / "docs" / "ARGUMENTS.md").read_text() == markdown_table(), (
        "docs/ARGUMENTS.md is stale: python -m streamvln_model.config.field_status > docs/ARGUMENTS.md"
    )


@pytest.mark.processes  # the worker module in a subprocess
def test_unknown_flag_is_refused_by_the_worker():
    done = subprocess.run(
        [sys.executable, "-m", "streamvln_model.train", "--print_arguments", "--learning_rat", "1e-4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--learning_rat" in done.stderr and "Traceback" not in done.stderr


def test_flow_and_worker_resolve_the_same_preset_identically(
    prefect_harness, tiny_checkpoint, synthetic_data, tmp_path
):
    """configs/tiny_cpu.yaml through the flow (plan.json) and through the worker's own parser."""
    from flows.presets import preset_parameters
    from tasks.parameters import LaunchConfig, TrainRequest
    from tests.helpers import train_flow

    preset = preset_parameters(REPO_ROOT / "configs" / "tiny_cpu.yaml")
    paths = {
        "model_name_or_path": str(tiny_checkpoint),
        "video_folder": str(synthetic_data),
        "output_dir": str(tmp_path / "out"),
    }
    request = TrainRequest(**{**preset["request"], **paths})
    result = train_flow(
        request=request, launch=LaunchConfig(**preset["launch"]), plan_root=tmp_path / "plans", plan_only=True
    )
    plan = json.loads(Path(result.plan_path).read_text())
    yaml_flags = {
        **{k: v for k, v in preset["request"].items() if k != "extra_args"},
        **preset["request"]["extra_args"],
    }
    assert {k: plan["flags"][k] for k in yaml_flags if k not in paths} == {
        k: v for k, v in yaml_flags.items() if k not in paths
    }
    # The same flags on the worker's command line (the launch machine's flags, use_cpu and gloo,
    # need torchrun's process group to resolve at all, so both sides compare without them).
    worker = print_arguments([a for k, v in plan["flags"].items() for a in (f"--{k}", _text(v))])
    different = {
        f"{group}.{key}": (value, worker[group].get(key))
        for group, values in plan["arguments"].items()
        for key, value in values.items()
        if key not in PER_PROCESS_FIELDS and worker[group].get(key) != value
    }
    assert different == {}
    assert plan["worker_flags"]["use_cpu"] is True and plan["worker_flags"]["ddp_backend"] == "gloo"
    assert plan["substitutions"] == []  # the preset asks for sdpa: nothing to substitute


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("stage", ["stage_one", "stage_two"])
def test_shipped_preset_is_the_published_script(stage):
    """configs/<stage>.yaml resolves to the published values; each flag's line cites its script line."""
    from flows.presets import preset_parameters
    from streamvln_model.config.arguments import as_data
    from tasks.parameters import TrainRequest, request_arguments

    path = REPO_ROOT / "configs" / f"{stage}.yaml"
    text = path.read_text().split("\nmodel:\n", 1)[1].split("\nlaunch:\n", 1)[0]  # the training groups
    request_lines = [line for line in text.splitlines() if line not in ("data:", "training:")]
    assert request_lines and all("# --" in line for line in request_lines), "a value without its script line"
    resolved = as_data(request_arguments(TrainRequest(**preset_parameters(path)["request"])))
    flat = {k: v for group in resolved.values() for k, v in group.items()}
    # Paths are ours; DeepSpeed is a launch setting; the flow's MLflow run replaces wandb.
    local = {"model_name_or_path", "video_folder", "output_dir", "run_name", "deepspeed", "report_to"}
    local |= {"mmc4_video_folder", "scanqa_video_folder", "qa_video_folder", "vision_tower"}
    expected = {k: v for k, v in PUBLISHED[stage].items() if k not in local}
    assert {k: flat[k] for k in expected if flat[k] != expected[k]} == {}
    assert field_problems(request_arguments(TrainRequest(**preset_parameters(path)["request"]))) == []


def test_tiny_stage_two_preset_is_the_tiny_recipe_plus_the_co_training_flags():
    """configs/tiny_stage_two.yaml (what `streamvln demo --stage two` runs): every flag resolves
    and passes the field checks, and apart from its data it is the tiny stage-one recipe."""
    from flows.presets import preset_parameters
    from tasks.parameters import TrainRequest, request_arguments

    two = preset_parameters(REPO_ROOT / "configs" / "tiny_stage_two.yaml")["request"]
    one = preset_parameters(REPO_ROOT / "configs" / "tiny_cpu.yaml")["request"]
    arguments = request_arguments(TrainRequest(**two))
    assert field_problems(arguments) == []
    data = arguments.data
    assert data.multi_task_training and data.data_path and data.qa_video_folder
    assert data.scanqa_video_folder and data.mmc4_video_folder and arguments.training.group_by_task
    paths = {"model_name_or_path", "video_folder", "output_dir", "max_steps"}
    assert {k: v for k, v in one.items() if k not in paths} == {k: two[k] for k in one if k not in paths}
