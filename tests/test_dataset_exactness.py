"""Navigation samples, exactly: published layout on disk -> index -> dataset -> collator.

Every expected value here is written down by hand or computed from the hand-written episodes with
plain Python (STREAMVLN.md §2-3); the code under test is never used to derive an expectation.
Token ids come from the real Qwen2 tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from streamvln_model.config.sample_shape import SampleShape
from streamvln_model.data.datasets.collator import DataCollatorForNavigation
from streamvln_model.data.datasets.navigation import VLNActionDataset
from streamvln_model.data.formats.annotations import load_episodes
from streamvln_model.data.index.tables import build_index
from streamvln_model.model.conversation import prepare_tokenizer
from streamvln_model.model.tokenizer import load_tokenizer
from streamvln_model.model.vision import build_image_processor, resolve_vision_config
from streamvln_model.synthetic.checkpoint import preset_config

F, H, K = 32, 8, 4  # num_frames, num_history, num_future_steps (the paper's settings)
IMAGE, MEMORY, IGNORE = -200, -300, -100
IM_START, IM_END, NEWLINE, SPACE, PAD = 151644, 151645, 198, 220, 151643
ASSISTANT = 77091  # "assistant"
SYMBOL_IDS = {"↑": 76286, "←": 71858, "→": 51018, "STOP": 50669}
SYMBOLS = {0: "STOP", 1: "↑", 2: "←", 3: "→"}

# --- The hand-written episodes ------------------------------------------------------------------
# 70 entries: the placeholder, then 69 real actions (8 rows of 8, then 5). The last real action is
# not STOP, so the only STOP of the episode is the one the dataset appends.
ACTIONS_70 = [
    -1,
    1, 1, 2, 1, 3, 3, 1, 1,  # actions[1..8]
    2, 2, 2, 1, 1, 3, 1, 1,  # actions[9..16]
    1, 1, 1, 1, 3, 2, 1, 3,  # actions[17..24]
    3, 3, 1, 1, 2, 1, 1, 1,  # actions[25..32]
    1, 2, 2, 1, 1, 1, 3, 1,  # actions[33..40]
    1, 1, 1, 3, 3, 3, 1, 2,  # actions[41..48]
    2, 1, 1, 1, 1, 2, 3, 1,  # actions[49..56]
    1, 1, 3, 1, 2, 2, 1, 1,  # actions[57..64]
    3, 1, 2, 1, 1,           # actions[65..69]
]  # fmt: skip
ACTIONS_33 = [-1, *([1, 1, 3, 2] * 8)]  # 33 entries: the 32nd target is the appended STOP alone
ACTIONS_64 = [-1, *([2, 1, 1, 3, 1, 1, 1] * 9)]  # 64 entries: a start at 64 == L is skipped
ACTIONS_4 = [-1, 3, 1, 0]  # the shortest episode that is kept (4 entries)
ACTIONS_3 = [-1, 1, 0]  # fewer than 4 entries: skipped

INSTRUCTIONS_70 = [
    "Walk past the table and stop at the door.",
    "Turn left at the sofa, go straight and wait by the stairs.",
]
INSTRUCTION = "Go down the hallway and stop in front of the bedroom."

# STREAMVLN.md §2, written out with the instruction spliced in (it replaces `<instruction>.`).
PROMPT = (
    "You are an autonomous navigation assistant. Your task is to {}"
    " Devise an action sequence to follow the instruction using the four actions:"
    " TURN LEFT (←) or TURN RIGHT (→) by 15 degrees, MOVE FORWARD (↑) by 25 centimeters, or STOP."
)
HISTORY = " These are your historical observations: <memory>."
PHRASES = (
    "you can see ",
    "in front of you is ",
    "there is ",
    "you can spot ",
    "you are toward the ",
    "ahead of you is ",
    "in your sight is ",
)
SYSTEM = "You are a helpful assistant."

TOWER_PX = 112


def grey_level(step: int) -> int:
    """Each frame is one flat grey whose level encodes its step, so pixels identify the frame."""
    return 20 + 3 * step


def write_source(root: Path, episodes: list[dict]) -> Path:
    """`root/annotations.json` + `root/images/<ep>/rgb/NNN.jpg`, one small JPEG per action entry."""
    root.mkdir(parents=True)
    for episode in episodes:
        rgb = root / episode["video"] / "rgb"
        rgb.mkdir(parents=True)
        for step in range(len(episode["actions"])):
            level = grey_level(step)
            Image.new("RGB", (16, 12), (level, level, level)).save(rgb / f"{step:03d}.jpg", "JPEG")
    (root / "annotations.json").write_text(json.dumps(episodes), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tokenizer():
    tok = load_tokenizer()
    return tok, prepare_tokenizer(tok)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    episodes = [
        {"id": 70, "video": "images/ep_070", "instructions": INSTRUCTIONS_70, "actions": ACTIONS_70},
        {"id": 3, "video": "images/ep_003", "instructions": [INSTRUCTION], "actions": ACTIONS_3},
        {"id": 33, "video": "images/ep_033", "instructions": INSTRUCTION, "actions": ACTIONS_33},
        {"id": 64, "video": "images/ep_064", "instructions": [INSTRUCTION], "actions": ACTIONS_64},
        {"id": 4, "video": "images/ep_004", "instructions": [INSTRUCTION], "actions": ACTIONS_4},
    ]
    return write_source(tmp_path_factory.mktemp("data") / "r2r", episodes)


@pytest.fixture(scope="module")
def built(source: Path, tokenizer):
    """Exactly the training construction: load_episodes -> build_index -> VLNActionDataset."""
    tok, spec = tokenizer
    episodes = load_episodes(str(source))
    index, summary = build_index(episodes, F, H, K)
    processor = build_image_processor(resolve_vision_config(preset_config("tiny")))
    dataset = VLNActionDataset(index, tok, spec, processor, SampleShape(F, H, K))
    return dataset, summary


def row_of(dataset: VLNActionDataset, episode_id: str, start: int, instruction_index: int = 0) -> int:
    rows = [
        i
        for i, r in enumerate(dataset.index)
        if (r["episode_id"], r["start"], r["instruction_index"]) == (episode_id, start, instruction_index)
    ]
    assert len(rows) == 1, (episode_id, start, instruction_index, rows)
    return rows[0]


def frame_paths(source: Path, episode: str, steps: list[int]) -> list[str]:
    return [str(source / "images" / episode / "rgb" / f"{s:03d}.jpg") for s in steps]


def expected_groups(actions: list[int], start: int) -> list[str]:
    """Hand rule: targets = actions[1:] + [STOP], steps start..min(start+F, L)-1, cut into K's."""
    targets = [*actions[1:], 0]
    chunk = targets[start : min(start + F, len(actions))]
    return ["".join(SYMBOLS[a] for a in chunk[i : i + K]) for i in range(0, len(chunk), K)]


def chatml_expectation(tok, messages: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Tokenise each ChatML message string on its own and build the qwen_1_5 label mask by hand."""
    placeholders = {
        tok.convert_tokens_to_ids("<image>"): IMAGE,
        tok.convert_tokens_to_ids("<memory>"): MEMORY,
    }
    ids: list[int] = []
    labels: list[int] = []
    for role, content in messages:
        piece = tok(f"<|im_start|>{role}\n{content}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        for token in (placeholders.get(t, t) for t in piece):
            ids.append(token)
            if token < 0:
                labels.append(IGNORE)
            elif role == "assistant" or token in (IM_START, IM_END, NEWLINE):
                labels.append(token)
            else:
                labels.append(IGNORE)
    return ids, labels


def phrase_of(text: str) -> str:
    """The conjunction phrase a user turn ends with (`<phrase><image>.`), checked to be published."""
    assert text.endswith("<image>.")
    matches = [p for p in PHRASES if text.endswith(" " + p + "<image>.") or text == p + "<image>."]
    assert len(matches) == 1, text
    return matches[0]


def expected_conversation(
    plan_conversation: list[dict], instruction: str, groups: list[str], history: bool
) -> list[dict]:
    """The dialogue STREAMVLN.md §2 prescribes, taking only the random phrases from the sample."""
    turns = []
    for i, group in enumerate(groups):
        phrase = phrase_of(plan_conversation[2 * i]["value"])
        user = phrase + "<image>."
        if i == 0:
            user = PROMPT.format(instruction) + (HISTORY if history else "") + " " + user
        turns += [{"from": "human", "value": user}, {"from": "gpt", "value": group}]
    return turns


def check_tokens_and_labels(tok, plan, expected_turns: list[dict]) -> None:
    messages = [("system", SYSTEM)] + [
        ("user" if t["from"] == "human" else "assistant", t["value"]) for t in expected_turns
    ]
    ids, labels = chatml_expectation(tok, messages)
    assert plan.input_ids == ids
    for position, (got, want) in enumerate(zip(plan.labels, labels, strict=True)):
        assert got == want, f"label at position {position}: got {got}, expected {want}"
    # Positions preceding <image>/<memory> are the lone space token 220.
    for position, token in enumerate(plan.input_ids):
        if token in (IMAGE, MEMORY):
            assert plan.input_ids[position - 1] == SPACE


def assistant_blocks(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Every `<|im_start|>assistant\\n ... <|im_end|>\\n` span of the sequence."""
    blocks = []
    for i in range(len(input_ids) - 2):
        if input_ids[i : i + 3] == [IM_START, ASSISTANT, NEWLINE]:
            end = input_ids.index(IM_END, i) + 2
            assert labels[i:end] == input_ids[i:end]
            blocks.append(input_ids[i:end])
    return blocks


def assistant_block_ids(symbols: str) -> list[int]:
    ids, rest = [], symbols
    while rest:
        head = next(s for s in SYMBOL_IDS if rest.startswith(s))
        ids.append(SYMBOL_IDS[head])
        rest = rest[len(head) :]
    return [IM_START, ASSISTANT, NEWLINE, *ids, IM_END, NEWLINE]


# --- Index ---------------------------------------------------------------------------------------
def test_index_rows_and_summary(built) -> None:
    dataset, summary = built
    rows = [(r["episode_id"], r["instruction_index"], r["start"]) for r in dataset.index]
    assert rows == [
        ("70", 0, 0), ("70", 0, 32), ("70", 0, 64),
        ("70", 1, 0), ("70", 1, 32), ("70", 1, 64),
        ("33", 0, 0), ("33", 0, 32),
        ("64", 0, 0), ("64", 0, 32),
        ("4", 0, 0),
    ]  # fmt: skip
    assert len(dataset) == 11
    assert summary.episodes == 4
    assert summary.skipped_short_episodes == 1  # the 3-entry episode
    assert summary.samples == 11
    assert summary.samples_with_history == 6
    assert summary.frames_per_sample_max == 16  # start 32 of the 70-entry episode: 8 + 8
    instructions = {r["instruction"] for r in dataset.index if r["episode_id"] == "70"}
    assert instructions == set(INSTRUCTIONS_70)


# --- The 70-entry episode, per chunk start -------------------------------------------------------
def test_start_0_has_no_memory_and_eight_images(built, source, tokenizer) -> None:
    dataset, _ = built
    tok, _ = tokenizer
    plan = dataset.plan(row_of(dataset, "70", 0))
    assert plan.start == 0
    assert plan.history_frames == []
    assert plan.current_frames == frame_paths(source, "ep_070", list(range(0, 32, 4)))
    assert plan.current_steps == [0, 4, 8, 12, 16, 20, 24, 28]
    assert plan.input_ids.count(MEMORY) == 0
    assert plan.input_ids.count(IMAGE) == 8
    groups = expected_groups(ACTIONS_70, 0)
    assert groups[:2] == ["↑↑←↑", "→→↑↑"]  # actions[1..8] read off the table above
    assert len(groups) == 8
    expected = expected_conversation(plan.conversation, INSTRUCTIONS_70[0], groups, history=False)
    assert plan.conversation == expected
    first = plan.conversation[0]["value"]
    assert first.startswith(
        "You are an autonomous navigation assistant. Your task is to Walk past the table and stop at "
        "the door. Devise an action sequence"
    )
    assert "<memory>" not in first
    check_tokens_and_labels(tok, plan, expected)


def test_start_32_history_current_and_labels(built, source, tokenizer) -> None:
    dataset, _ = built
    tok, _ = tokenizer
    plan = dataset.plan(row_of(dataset, "70", 32))
    assert plan.history_frames == frame_paths(source, "ep_070", [0, 4, 8, 12, 16, 20, 24, 28])
    assert plan.current_frames == frame_paths(source, "ep_070", [32, 36, 40, 44, 48, 52, 56, 60])
    assert plan.current_steps == [32, 36, 40, 44, 48, 52, 56, 60]
    assert plan.input_ids.count(MEMORY) == 1
    assert plan.input_ids.count(IMAGE) == 8
    groups = expected_groups(ACTIONS_70, 32)
    assert groups[0] == "↑←←↑"  # targets 32..35 = actions[33..36]
    expected = expected_conversation(plan.conversation, INSTRUCTIONS_70[0], groups, history=True)
    assert plan.conversation == expected
    first = plan.conversation[0]["value"]
    assert first.startswith(PROMPT.format(INSTRUCTIONS_70[0]) + " These are your historical observations: ")
    phrase = phrase_of(first)
    assert first.endswith(" These are your historical observations: <memory>. " + phrase + "<image>.")
    check_tokens_and_labels(tok, plan, expected)

    # The memory placeholder sits in the first user message, before its image, after a lone space.
    memory_at = plan.input_ids.index(MEMORY)
    assert plan.input_ids[memory_at - 1 : memory_at + 2] == [SPACE, MEMORY, 13]  # 13 = "."
    assert memory_at < plan.input_ids.index(IMAGE)

    # Learned positions, counted by hand: 8 assistant messages of 3 + 4 + 2 tokens, plus the
    # <|im_start|>, "\n", <|im_end|>, "\n" of the system and the 8 user messages.
    assert sum(label != IGNORE for label in plan.labels) == 8 * 9 + 9 * 4
    blocks = assistant_blocks(plan.input_ids, plan.labels)
    assert blocks == [assistant_block_ids(g) for g in groups]


def test_start_64_ends_with_the_appended_stop(built, source, tokenizer) -> None:
    dataset, _ = built
    tok, _ = tokenizer
    plan = dataset.plan(row_of(dataset, "70", 64))
    assert plan.history_frames == frame_paths(source, "ep_070", [0, 8, 16, 24, 32, 40, 48, 56])
    assert plan.current_frames == frame_paths(source, "ep_070", [64, 68])
    assert plan.input_ids.count(MEMORY) == 1
    assert plan.input_ids.count(IMAGE) == 2
    # Targets 64..69 = actions[65..69] + the appended STOP, written out by hand.
    assert expected_groups(ACTIONS_70, 64) == ["→↑←↑", "↑STOP"]
    answers = [t["value"] for t in plan.conversation if t["from"] == "gpt"]
    assert answers == ["→↑←↑", "↑STOP"]
    assert plan.conversation[-1]["value"].endswith("STOP")
    expected = expected_conversation(plan.conversation, INSTRUCTIONS_70[0], ["→↑←↑", "↑STOP"], True)
    check_tokens_and_labels(tok, plan, expected)
    assert plan.input_ids[-4:] == [SYMBOL_IDS["↑"], SYMBOL_IDS["STOP"], IM_END, NEWLINE]
    assert plan.labels[-4:] == plan.input_ids[-4:]


def test_second_instruction_gets_its_own_samples(built, tokenizer) -> None:
    dataset, _ = built
    tok, _ = tokenizer
    for start in (0, 32, 64):
        plan = dataset.plan(row_of(dataset, "70", start, instruction_index=1))
        assert plan.instruction == INSTRUCTIONS_70[1]
        groups = expected_groups(ACTIONS_70, start)
        expected = expected_conversation(plan.conversation, INSTRUCTIONS_70[1], groups, history=start > 0)
        assert plan.conversation == expected
        check_tokens_and_labels(tok, plan, expected)


def test_all_samples_match_the_hand_rule(built, tokenizer) -> None:
    """Every row of the index, every turn: symbols, phrases, ids and the label mask."""
    dataset, _ = built
    tok, _ = tokenizer
    actions = {"70": ACTIONS_70, "33": ACTIONS_33, "64": ACTIONS_64, "4": ACTIONS_4}
    for i in range(len(dataset)):
        plan = dataset.plan(i)
        row = dataset.index[i]
        groups = expected_groups(actions[row["episode_id"]], plan.start)
        expected = expected_conversation(plan.conversation, plan.instruction, groups, plan.start > 0)
        assert plan.conversation == expected
        check_tokens_and_labels(tok, plan, expected)
        assert plan.input_ids.count(IMAGE) == len(groups) == len(plan.current_frames)
        assert plan.input_ids.count(MEMORY) == (1 if plan.start else 0)
        assert len(plan.history_frames) == (H if plan.start else 0)


# --- Short and boundary episodes ----------------------------------------------------------------
def test_33_entries_second_sample_is_a_single_stop_turn(built, source, tokenizer) -> None:
    dataset, _ = built
    tok, _ = tokenizer
    plan = dataset.plan(row_of(dataset, "33", 32))
    assert plan.history_frames == frame_paths(source, "ep_033", [0, 4, 8, 12, 16, 20, 24, 28])
    assert plan.current_frames == frame_paths(source, "ep_033", [32])
    assert [t["from"] for t in plan.conversation] == ["human", "gpt"]
    assert plan.conversation[1]["value"] == "STOP"
    assert plan.input_ids.count(IMAGE) == 1
    assert plan.input_ids.count(MEMORY) == 1
    expected = expected_conversation(plan.conversation, INSTRUCTION, ["STOP"], history=True)
    check_tokens_and_labels(tok, plan, expected)
    assert assistant_blocks(plan.input_ids, plan.labels) == [
        [IM_START, ASSISTANT, NEWLINE, 50669, IM_END, 198]
    ]
    assert dataset[row_of(dataset, "33", 32)]["images"].shape == (9, 3, TOWER_PX, TOWER_PX)


def test_64_entries_yield_starts_0_and_32_only(built, source) -> None:
    dataset, _ = built
    assert [r["start"] for r in dataset.index if r["episode_id"] == "64"] == [0, 32]
    plan = dataset.plan(row_of(dataset, "64", 32))
    assert plan.current_frames == frame_paths(source, "ep_064", list(range(32, 64, 4)))
    answers = [t["value"] for t in plan.conversation if t["from"] == "gpt"]
    assert len(answers) == 8
    assert answers[-1].endswith("STOP")
    assert answers == expected_groups(ACTIONS_64, 32)


def test_3_entries_skipped_4_entries_kept(built) -> None:
    dataset, _ = built
    ids = [r["episode_id"] for r in dataset.index]
    assert "3" not in ids
    plan = dataset.plan(row_of(dataset, "4", 0))
    assert [t["value"] for t in plan.conversation if t["from"] == "gpt"] == ["→↑STOPSTOP"]
    assert plan.current_steps == [0]


# --- Pixels --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "steps"), [
    (0, [0, 4, 8, 12, 16, 20, 24, 28]),
    (32, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60]),
    (64, [0, 8, 16, 24, 32, 40, 48, 56, 64, 68]),
])  # fmt: skip
def test_images_are_history_then_current_in_tower_resolution(built, start: int, steps: list[int]) -> None:
    dataset, _ = built
    item = dataset[row_of(dataset, "70", start)]
    images = item["images"]
    assert images.shape == (len(steps), 3, TOWER_PX, TOWER_PX)
    assert images.dtype == torch.float32
    assert images.min() >= -1.0
    assert images.max() <= 1.0
    # Flat grey frames stay flat through the resize; SigLIP normalisation: (v / 255 - 0.5) / 0.5.
    for k, step in enumerate(steps):
        want = (grey_level(step) / 255 - 0.5) / 0.5
        assert torch.allclose(images[k], torch.full_like(images[k], want), atol=2 / 255), (k, step)
    assert item["time_ids"].tolist() == [s for s in steps if s >= start]
    assert item["task_type"] == 0
    assert item["input_ids"].dtype == torch.long
    assert item["labels"].shape == item["input_ids"].shape


# --- Collator ------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_and_keeps_frame_stacks(built, tokenizer, side: str) -> None:
    dataset, _ = built
    tok, _ = tokenizer
    assert tok.pad_token_id == PAD
    items = [dataset[row_of(dataset, "70", 32)], dataset[row_of(dataset, "33", 32)]]
    lengths = [len(x["input_ids"]) for x in items]
    assert lengths[0] > lengths[1]
    collator = DataCollatorForNavigation(
        pad_token_id=tok.pad_token_id, model_max_length=4096, padding_side=side
    )
    batch = collator(items)
    longest = lengths[0]
    assert batch["input_ids"].shape == (2, longest)
    assert batch["labels"].shape == (2, longest)
    assert batch["attention_mask"].shape == (2, longest)
    n = lengths[1]
    pad = longest - n
    text = slice(0, n) if side == "right" else slice(pad, longest)
    padding = slice(n, longest) if side == "right" else slice(0, pad)
    assert batch["input_ids"][0].tolist() == items[0]["input_ids"].tolist()
    assert batch["input_ids"][1, text].tolist() == items[1]["input_ids"].tolist()
    assert batch["input_ids"][1, padding].tolist() == [PAD] * pad
    assert batch["labels"][1, text].tolist() == items[1]["labels"].tolist()
    assert batch["labels"][1, padding].tolist() == [IGNORE] * pad
    assert batch["attention_mask"][0].tolist() == [1] * longest
    assert batch["attention_mask"][1, text].tolist() == [1] * n
    assert batch["attention_mask"][1, padding].tolist() == [0] * pad
    assert [tuple(x.shape) for x in batch["images"]] == [(16, 3, 112, 112), (9, 3, 112, 112)]
    assert torch.equal(batch["images"][0], items[0]["images"])
    assert torch.equal(batch["images"][1], items[1]["images"])
    assert [t.tolist() for t in batch["time_ids"]] == [[32, 36, 40, 44, 48, 52, 56, 60], [32]]
    assert batch["task_ids"].tolist() == [0, 0]


def test_collator_truncates_to_model_max_length(built, tokenizer) -> None:
    dataset, _ = built
    tok, _ = tokenizer
    items = [dataset[row_of(dataset, "4", 0)], dataset[row_of(dataset, "33", 32)]]
    batch = DataCollatorForNavigation(pad_token_id=tok.pad_token_id, model_max_length=50)(items)
    assert batch["input_ids"].shape == (2, 50)
    assert batch["input_ids"][0].tolist() == items[0]["input_ids"][:50].tolist()
    assert batch["labels"][1].tolist() == items[1]["labels"][:50].tolist()
    assert batch["attention_mask"].sum().item() == 100
