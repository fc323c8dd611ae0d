"""The navigation dialogue of one sample (StreamVLN's prompt wording, STREAMVLN.md §2)."""

from __future__ import annotations

import random

from streamvln_model.model.constants import ACTION_SYMBOLS, DEFAULT_IMAGE_TOKEN, DEFAULT_MEMORY_TOKEN

TASK_PROMPT = (
    "You are an autonomous navigation assistant. Your task is to <instruction>. Devise an action "
    "sequence to follow the instruction using the four actions: TURN LEFT (←) or TURN RIGHT (→) by 15 "
    "degrees, MOVE FORWARD (↑) by 25 centimeters, or STOP."
)
HISTORY_SUFFIX = f" These are your historical observations: {DEFAULT_MEMORY_TOKEN}."
CONJUNCTIONS = (
    "you can see ",
    "in front of you is ",
    "there is ",
    "you can spot ",
    "you are toward the ",
    "ahead of you is ",
    "in your sight is ",
)


def actions_text(actions: list[int]) -> str:
    return "".join(ACTION_SYMBOLS[a] for a in actions)


def task_prompt(instruction: str, has_history: bool) -> str:
    prompt = TASK_PROMPT.replace("<instruction>.", instruction)
    return prompt + HISTORY_SUFFIX if has_history else prompt


def navigation_conversation(
    instruction: str, groups: list[list[int]], has_history: bool, rng: random.Random
) -> list[dict[str, str]]:
    """One user/assistant turn per action group; the first user turn carries the task prompt."""
    conversation = []
    for i, group in enumerate(groups):
        observation = rng.choice(CONJUNCTIONS) + DEFAULT_IMAGE_TOKEN + "."
        if i == 0:
            observation = task_prompt(instruction, has_history) + " " + observation
        conversation.append({"from": "human", "value": observation})
        conversation.append({"from": "gpt", "value": actions_text(group)})
    return conversation
