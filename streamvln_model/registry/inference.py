"""Ask a trained model for the next actions: one navigation turn, greedy decoding.

The prompt and the frames are the ones training shows for the first turn of a sample
(data/vln_dataset.py): the task prompt (with ` These are your historical observations:
<memory>.` when there is history), a conjunction phrase and `<image>.`; the frames are the
history frames first, then the current one. History follows the training sampler
(data/sampling.py `history_steps`): from the frames of every earlier step (step 0 first), those
at steps 0, d, 2d, ... with d = len // num_history, which must give exactly num_history frames
(the model takes the first num_history frames of a sample as its memory). Passing the
num_history frames already chosen works too: they are taken as they are. The published
evaluation picks its memory frames the same way (github.com/InternRobotics/StreamVLN,
streamvln/streamvln_eval.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

from streamvln_model.checkpoint.loading import load_trained
from streamvln_model.config.sample_shape import STREAMVLN_SHAPE
from streamvln_model.data.datasets.sampling import history_steps
from streamvln_model.data.formats.prompts import navigation_conversation
from streamvln_model.data.media.images import load_rgb, preprocess_images
from streamvln_model.model.constants import ACTION_SYMBOLS
from streamvln_model.model.conversation import TokenSpec, prepare_tokenizer, tokenize_conversation
from streamvln_model.model.modeling import StreamVLNForCausalLM
from streamvln_model.model.vision import build_image_processor

_SYMBOL_TO_ACTION = {symbol: action for action, symbol in ACTION_SYMBOLS.items()}
ASSISTANT_HEADER = "<|im_start|>assistant\n"
Frame = str | Path | Image.Image | np.ndarray | list


def parse_actions(text: str) -> list[int]:
    """`'↑↑←STOP'` -> [1, 1, 2, 0]; anything else in the text is ignored."""
    actions, i = [], 0
    while i < len(text):
        for symbol, action in _SYMBOL_TO_ACTION.items():
            if text.startswith(symbol, i):
                actions.append(action)
                i += len(symbol)
                break
        else:
            i += 1
    return actions


def as_image(frame: Frame, field: str) -> Image.Image:
    """A frame given as a file path, a PIL image, or an H x W x 3 uint8 array (or nested list)."""
    if isinstance(frame, str | Path):
        return load_rgb(frame)
    if isinstance(frame, Image.Image):
        return frame
    pixels = np.asarray(frame)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"{field}: expected an image path or an H x W x 3 RGB array, got shape {pixels.shape}"
        )
    if pixels.dtype != np.uint8:
        if not np.issubdtype(pixels.dtype, np.integer) or pixels.min() < 0 or pixels.max() > 255:
            raise ValueError(f"{field}: pixels must be integers 0-255 (uint8), got dtype {pixels.dtype}")
        pixels = pixels.astype(np.uint8)
    return Image.fromarray(pixels)  # H x W x 3 uint8 is RGB


def select_history(frames: Sequence[Frame], num_history: int) -> list[Frame]:
    """The memory frames training would use for a sample starting after `len(frames)` steps."""
    if not frames:
        return []
    steps = history_steps(len(frames), num_history)
    if len(steps) != num_history:
        raise ValueError(
            f"history_frames: {len(frames)} frames give {len(steps)} memory frames; the model takes "
            f"exactly {num_history} (num_history). Fix: pass the frames of every earlier step "
            f"(a multiple of {num_history} of them, step 0 first), the {num_history} frames already "
            "chosen, or none"
        )
    return [frames[t] for t in steps]


@dataclass
class NavigationPolicy:
    model: StreamVLNForCausalLM
    tokenizer: object
    token_spec: TokenSpec
    image_processor: object

    @classmethod
    def from_pretrained(cls, path: str | Path, base: str | Path | None = None) -> NavigationPolicy:
        """Any save of a training run (full, LoRA, projector-only; `base` overrides the recorded
        base checkpoint of a partial save), with the tokenizer saved beside it."""
        model = load_trained(path, base=base).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        spec = prepare_tokenizer(tokenizer)
        return cls(model, tokenizer, spec, build_image_processor(model.get_vision_tower().config))

    @property
    def num_history(self) -> int:
        return int(self.model.config.num_history or 0)

    def prompt_ids(self, instruction: str, has_history: bool, rng: random.Random | None = None) -> list[int]:
        """The ids training gives the first turn of a sample, up to the assistant's answer.

        The conjunction phrase ("you can see ", ...) is drawn from `rng` as the dataset draws it
        (seeded `Random(0)` by default, so answers are reproducible).
        """
        rng = rng or random.Random(0)
        conversation = navigation_conversation(instruction, [[]], has_history, rng)[:1]
        input_ids, _ = tokenize_conversation(self.tokenizer, self.token_spec, conversation)
        return input_ids + self.tokenizer(ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]

    def pixels(self, current_frame: Frame, history_frames: Sequence[Frame] | None = None) -> torch.Tensor:
        """[num_history + 1, 3, S, S]: the memory frames, then the current one (or just the current)."""
        history = select_history(list(history_frames or []), self.num_history)
        frames = [*history, current_frame]
        fields = [f"history_frames[{i}]" for i in range(len(history))] + ["current_frame"]
        return preprocess_images(
            self.image_processor, [as_image(f, n) for f, n in zip(frames, fields, strict=True)]
        )

    @torch.no_grad()
    def next_actions(
        self,
        instruction: str,
        current_frame: Frame,
        history_frames: Sequence[Frame] | None = None,
        max_new_tokens: int | None = None,
        rng: random.Random | None = None,
    ) -> str:
        """The model's answer (e.g. `↑↑←→`) for one observation and the frames seen before it.

        `max_new_tokens` defaults to a turn's actions (num_future_steps) plus room for the end."""
        turn = self.model.config.num_future_steps or STREAMVLN_SHAPE.num_future_steps
        max_new_tokens = max_new_tokens or int(turn) + 4
        pixels = self.pixels(current_frame, history_frames)
        prompt = self.prompt_ids(instruction, pixels.shape[0] > 1, rng)
        output = self.model.generate(
            input_ids=torch.tensor([prompt]),
            images=[pixels],
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()
