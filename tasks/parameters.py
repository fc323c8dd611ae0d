"""The flow's parameters: what the Prefect UI shows as a form, in groups (pydantic models).

The Run form has one section per group: Model, Data, Training, Launch, Tracking. The training
groups declare no defaults of their own: every field is `None` = "the default declared in
streamvln_model/arguments.py", so a flow run and `torchrun -m streamvln_model.train` given the
same flags resolve to identical arguments. Descriptions come from the same dataclasses; bounds
and choices are the values the published parser and transformers accept. A preset
(configs/*.yaml, chosen by name) fills in the StreamVLN recipe; any field set in the form wins.

`TrainRequest` is the three training groups flattened: the published flag names in one object,
which is what the stages resolve.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from transformers.trainer_utils import SaveStrategy, SchedulerType

from streamvln_model.config.arguments import Arguments, default_of, help_of, resolve_flags
from streamvln_model.config.secrets import is_secret, split_secrets

# The choices transformers accepts (transformers.trainer_utils), offered by the form.
SCHEDULERS = tuple(choice.value for choice in SchedulerType)
SAVE_STRATEGIES = tuple(choice.value for choice in SaveStrategy)
# Fields every run needs: (group, field) -> what to put there.
REQUIRED_FIELDS = {
    ("model", "model_name_or_path"): "a checkpoint folder or a registered model (models:/name@alias)",
    ("data", "video_folder"): "comma-separated trajectory folders",
    ("training", "output_dir"): "the folder under which each run gets its own folder",
}


# JSON-schema names of the bounds a field may declare.
SCHEMA_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def flag(
    name: str,
    description: str | None = None,
    title: str | None = None,
    choices: tuple[Any, ...] | None = None,
    **bounds: float,
) -> Any:
    """A form field for the published flag `name`: unset by default, documented from the dataclass.

    Bounds and choices go into the JSON schema only: the Prefect UI and API check a deployment's
    parameters against it (the form refuses `learning_rate: -1` as you type), while every entry
    point, this one included, gets the full check from preflight, which names the flag and the fix.
    """
    text = description or help_of(name) or name.replace("_", " ")
    extra: dict[str, Any] = {SCHEMA_BOUNDS[k]: v for k, v in bounds.items()}
    if choices:
        extra["enum"] = [*choices, None]  # None: unset
    return Field(
        default=None,
        title=title or name.replace("_", " ").capitalize(),
        description=f"{text} (unset: {default_of(name)!r})",
        json_schema_extra=extra or None,
    )


class Group(BaseModel):
    """A section of the form: unknown fields are errors, not silently ignored defaults."""

    model_config = ConfigDict(extra="forbid")

    def set_fields(self) -> dict[str, Any]:
        """The fields this group sets (None = unset)."""
        return {k: v for k, v in self if v is not None and v != {}}


class ModelOptions(Group):
    """The checkpoint to start from and which parts of it train."""

    model_config = ConfigDict(title="Model")

    model_name_or_path: str | None = Field(
        default=None,
        title="Checkpoint",
        description="Checkpoint folder in the LLaVA-Video/StreamVLN layout, or a registered model "
        "`models:/<name>@<alias>` / `models:/<name>/<version>` (downloaded once and cached)",
    )
    version: str | None = flag("version", title="Conversation template")
    mm_tunable_parts: str | None = flag("mm_tunable_parts", title="Trained parts")
    mm_projector_type: str | None = flag("mm_projector_type", title="Projector")
    mm_vision_select_layer: int | None = flag("mm_vision_select_layer", title="Vision layer", le=-1)
    mm_use_im_start_end: bool | None = flag("mm_use_im_start_end")
    mm_use_im_patch_token: bool | None = flag("mm_use_im_patch_token")
    lora_enable: bool | None = flag("lora_enable", "Train LoRA adapters on the language model", title="LoRA")
    bits: int | None = flag(
        "bits",
        "4 or 8: load the language model quantized (QLoRA, with LoRA)",
        title="Bits",
        choices=(4, 8, 16),
    )


class DataOptions(Group):
    """Trajectories, history and co-training data."""

    model_config = ConfigDict(title="Data")

    video_folder: str | None = Field(
        default=None,
        title="Trajectory folders",
        description="Comma-separated trajectory folders (annotations.json + images/), local or s3://",
    )
    num_history: int | None = flag("num_history", title="History frames", ge=0)
    num_frames: int | None = flag("num_frames", title="Frames per sample", ge=1)
    num_future_steps: int | None = flag("num_future_steps", title="Actions per turn", ge=1)
    data_augmentation: bool | None = flag(
        "data_augmentation", "Colour jitter, posterize, sharpness, autocontrast"
    )
    remove_init_turns: bool | None = flag("remove_init_turns")
    multi_task_training: bool | None = flag("multi_task_training", "Co-train on the data_path mixture")
    data_path: str | None = flag(
        "data_path", "Co-training YAML (QA, ScanQA, MMC4 groups)", title="Co-training YAML"
    )
    qa_video_folder: str | None = flag("qa_video_folder", "Root of the video QA videos")
    scanqa_video_folder: str | None = flag("scanqa_video_folder", "Root of the ScanNet posed images")
    mmc4_video_folder: str | None = flag("mmc4_video_folder", "Root of the MMC4 images")
    group_by_task: bool | None = flag("group_by_task", "Batches never mix tasks")
    frames_upbound: int | None = flag("frames_upbound", "Most frames per co-training video", ge=0)
    force_sample: bool | None = flag("force_sample", "Always sample frames_upbound frames uniformly")
    add_time_instruction: bool | None = flag(
        "add_time_instruction", "Say the video's duration and frame times"
    )
    max_invalid_fraction: float | None = flag("max_invalid_fraction", ge=0, le=1)


class TrainingOptions(Group):
    """Optimisation, schedule, precision and checkpoints."""

    model_config = ConfigDict(title="Training")

    output_dir: str | None = Field(
        default=None,
        title="Output root",
        description="Each flow run writes into <output_dir>/<flow run name> (resume one with resume_from)",
    )
    learning_rate: float | None = flag("learning_rate", "Learning rate of the language model", ge=0)
    mm_vision_tower_lr: float | None = flag("mm_vision_tower_lr", "Learning rate of the vision tower", ge=0)
    mm_projector_lr: float | None = flag("mm_projector_lr", "Learning rate of the projector", ge=0)
    weight_decay: float | None = flag("weight_decay", "AdamW weight decay", ge=0)
    warmup_ratio: float | None = flag("warmup_ratio", ge=0, le=1)
    lr_scheduler_type: str | None = flag("lr_scheduler_type", "Learning-rate schedule", choices=SCHEDULERS)
    num_train_epochs: float | None = flag("num_train_epochs", "Epochs (ignored when max_steps > 0)")
    max_steps: int | None = flag("max_steps", "Stop after this many optimizer steps (-1: use epochs)", ge=-1)
    per_device_train_batch_size: int | None = flag(
        "per_device_train_batch_size", "Samples per GPU per step", title="Batch size per device", ge=1
    )
    gradient_accumulation_steps: int | None = flag(
        "gradient_accumulation_steps", "Micro-batches per step", ge=1
    )
    model_max_length: int | None = flag("model_max_length", ge=1)
    gradient_checkpointing: bool | None = flag("gradient_checkpointing", "Recompute activations")
    bf16: bool | None = flag("bf16", "bfloat16 weights and autocast")
    gpu_memory_gb: float | None = flag("gpu_memory_gb", gt=0)
    logging_steps: float | None = flag("logging_steps", "Log every N steps", gt=0)
    save_strategy: str | None = flag("save_strategy", "When to write checkpoints", choices=SAVE_STRATEGIES)
    save_steps: float | None = flag("save_steps", "Checkpoint every N steps", gt=0)
    save_total_limit: int | None = flag("save_total_limit", "Checkpoints kept", ge=1)
    dataloader_num_workers: int | None = flag("dataloader_num_workers", "Loader processes per rank", ge=0)
    seed: int | None = flag("seed", "Random seed")
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        title="Other flags",
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


GROUPS: dict[str, type[Group]] = {"model": ModelOptions, "data": DataOptions, "training": TrainingOptions}


class TrainRequest(ModelOptions, DataOptions, TrainingOptions):
    """The training groups flattened: published flag names; any other published flag in `extra_args`."""

    model_config = ConfigDict(title="TrainRequest")

    @model_validator(mode="after")
    def _required(self) -> TrainRequest:
        missing = [
            f"{group}.{name} (the flag --{name}): {what}"
            for (group, name), what in REQUIRED_FIELDS.items()
            if getattr(self, name) in (None, "")
        ]
        if missing:
            raise ValueError("missing " + "; ".join(missing) + ". Fix: set it in the form or choose a preset")
        return self

    def groups(self) -> dict[str, Group]:
        """The request split back into its form sections (model=, data=, training=)."""
        return {
            name: cls(**{k: getattr(self, k) for k in cls.model_fields if getattr(self, k) is not None})
            for name, cls in GROUPS.items()
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

    model_config = ConfigDict(extra="forbid", title="Launch")

    nproc_per_node: int = Field(
        default=1, ge=1, le=64, title="Processes per node", description="GPUs per node"
    )
    nnodes: int = Field(default=1, ge=1, le=1024, title="Nodes")
    rdzv_endpoint: str | None = Field(
        default=None, title="Rendezvous", description="host:port of the rendezvous for multi-node runs"
    )
    rdzv_id: str | None = Field(default=None, title="Rendezvous id", description="Same on every node")
    rdzv_timeout_s: int = Field(
        default=900,
        ge=10,
        title="Rendezvous timeout (s)",
        description="Fail when not every node joined the rendezvous within this many seconds",
    )
    launcher: Literal["local", "srun"] = Field(
        default="local",
        title="Launcher",
        description="local: torchrun on the worker's machine (one node, or this node of several); "
        "srun: torchrun on every node of the Slurm allocation the worker runs in",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", title="Device")
    deepspeed: str | None = Field(
        default=None, title="DeepSpeed config", description="JSON config (ZeRO-2/3)"
    )
    timeout_s: int | None = Field(
        default=None, ge=1, title="Time limit (s)", description="Kill training after this many seconds"
    )


class TrackingConfig(BaseModel):
    """Where the run is tracked and the trained model registered."""

    model_config = ConfigDict(extra="forbid", title="Tracking")

    experiment_name: str = Field(default="streamvln", title="MLflow experiment")
    model_name: str = Field(default="streamvln", title="Registered model")
    alias: str = Field(
        default="candidate",
        title="Alias",
        description="Alias the new version gets (champion moves only on promotion)",
    )


# The shipped presets (configs/), by name: the flow's `preset` parameter.
PresetName = Literal["tiny", "tiny_stage_two", "stage_one", "stage_two"]
