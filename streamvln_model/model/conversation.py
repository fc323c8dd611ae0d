"""Chat templates and label masking (`--version qwen_1_5`, the one StreamVLN trains with).

Each message is tokenised on its own (as LLaVA-NeXT does) so token boundaries match the
published ids exactly; all messages of a sample go through the tokenizer in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase

from streamvln_model.model.constants import (
    DEFAULT_IMAGE_TOKEN,
    DEFAULT_MEMORY_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    MEMORY_TOKEN_INDEX,
)
from streamvln_model.model.tokenizer import CHATML_TEMPLATE

SYSTEM_MESSAGE = "You are a helpful assistant."
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
SUPPORTED_VERSIONS = ("qwen_1_5",)
NEWLINE_ID = 198  # "\n" in the Qwen2 vocabulary


@dataclass(frozen=True)
class TokenSpec:
    """Ids the masking needs, resolved once per tokenizer (never per sample)."""

    image_token_id: int
    memory_token_id: int
    always_learned: frozenset[int]


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, version: str = "qwen_1_5") -> TokenSpec:
    """Add `<image>`/`<memory>` as special tokens (only to find them) and the ChatML template."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"--version {version!r} is not supported yet; use one of {', '.join(SUPPORTED_VERSIONS)}"
        )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (DEFAULT_IMAGE_TOKEN, DEFAULT_MEMORY_TOKEN)],
        special_tokens=True,
    )
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    return TokenSpec(
        image_token_id=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        memory_token_id=tokenizer.convert_tokens_to_ids(DEFAULT_MEMORY_TOKEN),
        always_learned=frozenset({im_start, im_end, NEWLINE_ID}),
    )


def render_message(role: str, content: str) -> str:
    """The ChatML text of one message, identical to CHATML_TEMPLATE applied to it alone."""
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    spec: TokenSpec,
    conversation: list[dict[str, str]],
    system_message: str = SYSTEM_MESSAGE,
) -> tuple[list[int], list[int]]:
    """qwen_1_5 ids and labels: learn assistant messages in full plus <|im_start|>, <|im_end|>, \\n."""
    roles = ["system"] + [ROLES[turn["from"]] for turn in conversation]
    texts = [render_message("system", system_message)] + [
        render_message(role, turn["value"]) for role, turn in zip(roles[1:], conversation, strict=True)
    ]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    labels: list[int] = []
    for role, ids in zip(roles, encoded, strict=True):
        input_ids += ids
        labels += ids if role == "assistant" else [IGNORE_INDEX] * len(ids)
    placeholders = {spec.image_token_id: IMAGE_TOKEN_INDEX, spec.memory_token_id: MEMORY_TOKEN_INDEX}
    for i, token in enumerate(input_ids):
        if token in spec.always_learned:
            labels[i] = token
        elif token in placeholders:
            input_ids[i] = placeholders[token]
            labels[i] = IGNORE_INDEX
    return input_ids, labels
