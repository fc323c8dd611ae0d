"""StreamVLN: the model, data and training worker, usable without Prefect."""

from .configuration import StreamVLNConfig
from .constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, MEMORY_TOKEN_INDEX
from .modeling import StreamVLNForCausalLM

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "MEMORY_TOKEN_INDEX",
    "StreamVLNConfig",
    "StreamVLNForCausalLM",
]
