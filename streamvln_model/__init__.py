"""StreamVLN: the model, data and training worker, usable without Prefect."""

import logging

# bitsandbytes (imported by peft and the Trainer) warns on every CPU host with AVX512-BF16 that it
# cannot fetch an optional 4-bit CPU kernel from the hub (`kernels` package); nothing here
# downloads code, and its own kernels are used instead. Raised before anything imports it, so the
# warning does not precede every CLI error message.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from streamvln_model.model.configuration import StreamVLNConfig  # noqa: E402
from streamvln_model.model.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, MEMORY_TOKEN_INDEX  # noqa: E402
from streamvln_model.model.modeling import StreamVLNForCausalLM  # noqa: E402

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "MEMORY_TOKEN_INDEX",
    "StreamVLNConfig",
    "StreamVLNForCausalLM",
]
