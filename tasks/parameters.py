"""The flow's parameters: what the Prefect UI shows as a form (pydantic models, typed, documented)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

STAGE_ONE_TUNABLE = "mm_vision_tower,mm_mlp_adapter,mm_language_model"


class TrainRequest(BaseModel):
    """Training arguments with the published flag names; anything else goes in `extra_args`."""

    model_name_or_path: str = Field(description="Local checkpoint folder in the LLaVA-Video layout")
    video_folder: str = Field(description="Comma-separated trajectory folders (annotations.json + images/)")
    output_dir: str = Field(description="Where checkpoints and the final model are written")
    version: str = "qwen_1_5"
    num_history: int = 8
    num_frames: int = 32
    num_future_steps: int = 4
    mm_tunable_parts: str = STAGE_ONE_TUNABLE
    learning_rate: float = 2e-5
    mm_vision_tower_lr: float | None = 5e-6
    mm_projector_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.075
    lr_scheduler_type: str = "cosine"
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 2
    model_max_length: int = 32768
    gradient_checkpointing: bool = True
    bf16: bool = False
    logging_steps: int = 1
    save_strategy: str = "steps"
    save_steps: int = 500
    save_total_limit: int = 1
    dataloader_num_workers: int = 0
    seed: int = 0
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other published flag, e.g. {'tf32': true, 'torch_compile': true}",
    )

    def flags(self) -> dict[str, Any]:
        """Flag name -> value, as `torchrun -m streamvln_model.train` receives them."""
        flags = self.model_dump(exclude={"extra_args"}, exclude_none=True)
        flags.update(self.extra_args)
        flags.setdefault("report_to", "none")
        flags.setdefault("disable_tqdm", True)
        return flags


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
