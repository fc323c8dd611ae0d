"""What the model sees: decoded turns, learned tokens and frame files of a few samples."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE, SampleShape
from streamvln_model.data.datasets.navigation import SamplePlan, VLNActionDataset
from streamvln_model.data.datasets.sampling import validate_sampling
from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.index.tables import build_index
from streamvln_model.model.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, MEMORY_TOKEN_INDEX
from streamvln_model.model.conversation import prepare_tokenizer

PLACEHOLDER_TEXT = {IMAGE_TOKEN_INDEX: "<image>", MEMORY_TOKEN_INDEX: "<memory>"}


def preview_plans(
    video_folder: str, tokenizer_path: str, num: int = 3, shape: SampleShape = STREAMVLN_SHAPE
) -> tuple[PreTrainedTokenizerBase, list[SamplePlan]]:
    """The first `num` samples (0 = all) exactly as the training dataset builds them, and the
    prepared tokenizer that built them (to render them with)."""
    validate_sampling(shape.num_frames, shape.num_history, shape.num_future_steps)
    episodes = load_episodes(video_folder)  # bad data fails before the tokenizer load
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    spec = prepare_tokenizer(tokenizer)
    index, _ = build_index(episodes, shape.num_frames, shape.num_history, shape.num_future_steps)
    dataset = VLNActionDataset(index, tokenizer, spec, image_processor=None, shape=shape)
    count = len(dataset) if num == 0 else min(num, len(dataset))
    return tokenizer, [dataset.plan(i) for i in range(count)]


def _decode(tokenizer, ids: list[int]) -> str:
    return "".join(PLACEHOLDER_TEXT.get(t) or tokenizer.decode([t]) for t in ids)


def render_plan(tokenizer, plan: SamplePlan) -> str:
    """Human view: the decoded sequence with learned spans wrapped in ⟦ ⟧."""
    pieces, learned_run = [], []
    for token, label in zip(plan.input_ids, plan.labels, strict=True):
        if label != IGNORE_INDEX:
            learned_run.append(token)
            continue
        if learned_run:
            pieces.append("⟦" + _decode(tokenizer, learned_run) + "⟧")
            learned_run = []
        pieces.append(_decode(tokenizer, [token]))
    if learned_run:
        pieces.append("⟦" + _decode(tokenizer, learned_run) + "⟧")
    header = (
        f"episode {plan.episode_id} start {plan.start} | instruction: {plan.instruction}\n"
        f"history frames ({len(plan.history_frames)}): {', '.join(plan.history_frames) or '-'}\n"
        f"current frames ({len(plan.current_frames)}): {', '.join(plan.current_frames)}\n"
    )
    return header + "".join(pieces)


def plan_record(plan: SamplePlan) -> dict:
    return {
        "episode_id": plan.episode_id,
        "start": plan.start,
        "instruction": plan.instruction,
        "input_ids": plan.input_ids,
        "labels": plan.labels,
        "history_frames": plan.history_frames,
        "current_frames": plan.current_frames,
    }
