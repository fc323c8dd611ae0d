"""The flow's parameters: what the Prefect UI shows as a form (pydantic models, typed, documented).

`TrainRequest` declares no training defaults: every field is `None` = "the default declared in
streamvln_model/arguments.py", so a flow run and `torchrun -m streamvln_model.train` given the
same flags resolve to identical arguments. Descriptions come from the same dataclasses. Presets
(configs/*.yaml) fill in the StreamVLN recipe.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from streamvln_model.arguments import Arguments, default_of, help_of, resolve_flags
from streamvln_model.secrets import is_secret, split_secrets


def flag(name: str, description: str | None = None) -> Any:
    """A form field for the published flag `name`: unset by default, documented from the dataclass."""
    text = description or help_of(name) or name.replace("_", " ")
    return Field(default=None, description=f"{text} (unset: {default_of(name)!r})")


class TrainRequest(BaseModel):
    """Training arguments with the published flag names; any other published flag goes in `extra_args`."""

    model_config = ConfigDict(extra="forbid")  # a misspelled field is an error, not a silent default

    # model
    model_name_or_path: str = Field(description="Local checkpoint folder in the LLaVA-Video/StreamVLN layout")
    version: str | None = flag("version")
    mm_tunable_parts: str | None = flag("mm_tunable_parts")
    mm_projector_type: str | None = flag("mm_projector_type")
    mm_vision_select_layer: int | None = flag("mm_vision_select_layer")
    mm_use_im_start_end: bool | None = flag("mm_use_im_start_end")
    mm_use_im_patch_token: bool | None = flag("mm_use_im_patch_token")
    # data
    video_folder: str = Field(description="Comma-separated trajectory folders (annotations.json + images/)")
    num_history: int | None = flag("num_history")
    num_frames: int | None = flag("num_frames")
    num_future_steps: int | None = flag("num_future_steps")
    data_augmentation: bool | None = flag(
        "data_augmentation", "Colour jitter, posterize, sharpness, autocontrast"
    )
    remove_init_turns: bool | None = flag("remove_init_turns")
    multi_task_training: bool | None = flag("multi_task_training", "Co-train on the data_path mixture")
    data_path: str | None = flag("data_path", "Co-training YAML (QA, ScanQA, MMC4 groups)")
    qa_video_folder: str | None = flag("qa_video_folder", "Root of the video QA videos")
    scanqa_video_folder: str | None = flag("scanqa_video_folder", "Root of the ScanNet posed images")
    mmc4_video_folder: str | None = flag("mmc4_video_folder", "Root of the MMC4 images")
    group_by_task: bool | None = flag("group_by_task", "Batches never mix tasks")
    frames_upbound: int | None = flag("frames_upbound", "Most frames per co-training video")
    force_sample: bool | None = flag("force_sample", "Always sample frames_upbound frames uniformly")
    add_time_instruction: bool | None = flag(
        "add_time_instruction", "Say the video's duration and frame times"
    )
    max_invalid_fraction: float | None = flag("max_invalid_fraction")
    # training
    output_dir: str = Field(description="Where checkpoints and the final model are written")
    learning_rate: float | None = flag("learning_rate", "Learning rate of the language model")
    mm_vision_tower_lr: float | None = flag("mm_vision_tower_lr", "Learning rate of the vision tower")
    mm_projector_lr: float | None = flag("mm_projector_lr", "Learning rate of the projector")
    weight_decay: float | None = flag("weight_decay", "AdamW weight decay")
    warmup_ratio: float | None = flag("warmup_ratio")
    lr_scheduler_type: str | None = flag("lr_scheduler_type", "Learning-rate schedule")
    num_train_epochs: float | None = flag("num_train_epochs", "Epochs")
    max_steps: int | None = flag("max_steps", "Stop after this many optimizer steps (-1: use epochs)")
    per_device_train_batch_size: int | None = flag("per_device_train_batch_size", "Samples per GPU per step")
    gradient_accumulation_steps: int | None = flag("gradient_accumulation_steps", "Micro-batches per step")
    model_max_length: int | None = flag("model_max_length")
    gradient_checkpointing: bool | None = flag("gradient_checkpointing", "Recompute activations")
    bf16: bool | None = flag("bf16", "bfloat16 weights and autocast")
    lora_enable: bool | None = flag("lora_enable", "Train LoRA adapters on the language model")
    bits: int | None = flag("bits", "4 or 8: load the language model quantized (QLoRA, with lora_enable)")
    gpu_memory_gb: float | None = flag("gpu_memory_gb")
    logging_steps: float | None = flag("logging_steps", "Log every N steps")
    save_strategy: str | None = flag("save_strategy", "no / steps / epoch")
    save_steps: float | None = flag("save_steps", "Checkpoint every N steps")
    save_total_limit: int | None = flag("save_total_limit", "Checkpoints kept")
    dataloader_num_workers: int | None = flag("dataloader_num_workers", "Loader processes per rank")
    seed: int | None = flag("seed", "Random seed")
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other published flag, e.g. {'tf32': true, 'torch_compile': true}. "
        "Secrets (hub_token) are masked and reach the workers only through their environment.",
    )

    @field_validator("extra_args")
    @classmethod
    def _mask_secret_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        """A secret typed into the form is held as SecretStr: masked wherever Prefect stores it."""
        return {
            k: SecretStr(str(v)) if is_secret(k) and not isinstance(v, SecretStr) else v
            for k, v in values.items()
        }

    def flags(self) -> dict[str, Any]:
        """Flag name -> value for the fields the request sets (secrets included, as SecretStr)."""
        flags = self.model_dump(exclude={"extra_args"}, exclude_none=True)
        flags.update(self.extra_args)
        flags.setdefault("report_to", "none")
        flags.setdefault("disable_tqdm", True)
        return flags


def request_arguments(request: TrainRequest) -> Arguments:
    """The request's flags resolved by the one resolver every path uses; secrets left out."""
    flags, _ = split_secrets(request.flags())
    return resolve_flags(flags)


class LaunchConfig(BaseModel):
    """How torchrun starts the workers (one node by default)."""

    nproc_per_node: int = Field(default=1, ge=1)
    nnodes: int = Field(default=1, ge=1)
    rdzv_endpoint: str | None = Field(
        default=None, description="host:port of the rendezvous for multi-node runs"
    )
    rdzv_id: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deepspeed: str | None = Field(default=None, description="DeepSpeed JSON config (ZeRO-2/3)")
    timeout_s: int | None = Field(default=None, description="Kill training after this many seconds")


class RegistryConfig(BaseModel):
    """Where the run is tracked and the trained model registered."""

    experiment_name: str = "streamvln"
    model_name: str = "streamvln"
    alias: str = "candidate"
