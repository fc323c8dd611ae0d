"""Stage 5, Vision Tower Setup: tower sizes, image preprocessing, visual tokens per frame."""

from __future__ import annotations

from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.vision import frame_tokens, resolve_vision_config
from tasks.caching import planning_task
from tasks.types import ModelPlan, VisionPlan


@planning_task("vision-tower-setup")
def setup_vision(model_plan: ModelPlan) -> VisionPlan:
    config = StreamVLNConfig.from_dict(model_plan.config)
    tower = resolve_vision_config(config)
    side = tower.image_size // tower.patch_size
    stride, mode = config.mm_spatial_pool_stride, config.mm_spatial_pool_mode
    return VisionPlan(
        image_size=tower.image_size,
        patch_size=tower.patch_size,
        patches_per_side=side,
        tokens_per_frame=frame_tokens(config),
        pool_mode=mode,
        pool_stride=stride,
    )
