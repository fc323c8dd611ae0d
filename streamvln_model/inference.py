"""Ask a trained model for the next actions: one navigation turn, greedy decoding."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from .constants import ACTION_SYMBOLS
from .conversation import TokenSpec, prepare_tokenizer, tokenize_conversation
from .data.images import preprocess_frames
from .data.prompts import navigation_conversation
from .loading import load_trained
from .modeling import StreamVLNForCausalLM
from .vision import build_image_processor

_SYMBOL_TO_ACTION = {symbol: action for action, symbol in ACTION_SYMBOLS.items()}


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

    @torch.no_grad()
    def next_actions(
        self,
        instruction: str,
        current_frame: str,
        history_frames: list[str] | None = None,
        max_new_tokens: int = 8,
    ) -> str:
        """The model's answer for one observation (history frames: exactly num_history of them, or none)."""
        history = history_frames or []
        conversation = navigation_conversation(instruction, [[]], bool(history), random.Random(0))[:1]
        input_ids, _ = tokenize_conversation(self.tokenizer, self.token_spec, conversation)
        prompt = input_ids + self.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        pixels = preprocess_frames(self.image_processor, [*history, current_frame])
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
