"""What scanning one annotation file of a co-training format yields, and the checks they share.

A scan turns parsed annotation entries into index rows (root-relative media paths, no pixels),
the media files those rows read (for the checker that decodes them in parallel), and the
problems found, each naming its entry. A bad entry yields a problem and no row, never a
silently substituted neighbour (the published loader retries with sample `i + 1` on any error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamvln_model.data.formats.text import text_problem
from streamvln_model.data.validation.records import Problem

ROLES = ("human", "gpt")
IMAGE = "image"
VIDEO = "video"
FOLDER = "folder"


@dataclass
class Scan:
    """Rows (a format's FEATURES), media `(row, relative path, kind)`, problems, text size per row."""

    rows: list[dict] = field(default_factory=list)
    media: list[tuple[int, str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    text_chars: list[int] = field(default_factory=list)

    def add_row(self, row: dict, media: list[tuple[str, str]], text_chars: int) -> None:
        position = len(self.rows)
        self.rows.append(row)
        self.media.extend((position, path, kind) for path, kind in media)
        self.text_chars.append(text_chars)


def entry_label(number: int, entry: Any) -> str:
    """`entry #3 (id=abc)`: how problems name an entry of an annotation list."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"entry #{number}" + (f" (id={ident})" if ident not in (None, "") else "")


def no_placeholders(turn: int) -> tuple[str, ...]:
    return ()


def conversation_problems(
    conversation: Any, allowed: Callable[[int], tuple[str, ...]] = no_placeholders
) -> list[tuple[str, str]]:
    """(field, reason) for each structural or text fault of a LLaVA `conversations` list.

    Turns alternate human, gpt, ... and end with gpt (an unanswered question trains nothing);
    every value is literal text, with the placeholders `allowed(turn)` the only exception.
    """
    if not isinstance(conversation, list) or not conversation:
        return [("conversations", "missing or empty. Fix: a list of {from, value} turns")]
    found: list[tuple[str, str]] = []
    for k, turn in enumerate(conversation):
        where = f"conversations[{k}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            found.append((where, "not a {from, value} turn with a text value"))
            continue
        expected = ROLES[k % 2]
        if turn.get("from") != expected:
            found.append(
                (
                    f"{where}.from",
                    f"is {turn.get('from')!r}, expected {expected!r} (turns alternate human, gpt)",
                )
            )
        reason = text_problem(turn["value"], allowed(k))
        if reason:
            found.append((f"{where}.value", reason))
    if len(conversation) % 2:
        found.append(("conversations", "ends with a human turn. Fix: add its gpt answer or drop the turn"))
    return found


def split_conversation(conversation: list[dict]) -> tuple[list[str], list[str]]:
    """The `roles` and `texts` columns of a checked conversation."""
    return [turn["from"] for turn in conversation], [turn["value"] for turn in conversation]


def join_conversation(roles: list[str], texts: list[str]) -> list[dict[str, str]]:
    return [{"from": role, "value": text} for role, text in zip(roles, texts, strict=True)]
