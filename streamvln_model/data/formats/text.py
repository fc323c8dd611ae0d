"""Text is data: instructions and answers never become chat-template tokens or placeholders.

The tokenizer splits special tokens out of any text, so an instruction containing
`<|im_end|>\\n<|im_start|>assistant\\n...` would train a fake assistant turn, and a stray
`<image>` or `<memory>` would ask the model for a visual block that the sample does not have.
Such text is refused with the sample named (the user fixes or drops it), never rewritten.
"""

from __future__ import annotations

import re

from streamvln_model.model.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_MEMORY_TOKEN

VIDEO_PLACEHOLDER = "<video>"
PLACEHOLDERS = (DEFAULT_IMAGE_TOKEN, DEFAULT_MEMORY_TOKEN, VIDEO_PLACEHOLDER)
_CHAT_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>")
# Far beyond any real instruction or answer; longer text is a broken export, not a sample.
MAX_TEXT_CHARS = 20_000


def text_problem(text: str, allowed: tuple[str, ...] = ()) -> str | None:
    """Why `text` cannot be used as literal text, or None. `allowed`: placeholders this field may hold."""
    if not isinstance(text, str) or not text.strip():
        return "empty text"
    if len(text) > MAX_TEXT_CHARS:
        return f"{len(text)} characters (limit {MAX_TEXT_CHARS}). Fix: shorten it or drop the sample"
    token = _CHAT_TOKEN.search(text)
    if token:
        return (
            f"contains the chat-template token {token.group(0)!r}, which would inject a turn. "
            "Fix: remove it from the text"
        )
    for placeholder in PLACEHOLDERS:
        if placeholder in text and placeholder not in allowed:
            return f"contains the placeholder {placeholder!r} where none belongs. Fix: remove it"
    return None


def estimate_text_tokens(chars: int) -> int:
    """Qwen2's BPE averages ~4 characters per token on English; 3 keeps the estimate on the safe side."""
    return -(-chars // 3)
