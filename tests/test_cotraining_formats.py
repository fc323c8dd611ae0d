"""Co-training samples, exactly: hand-made files on disk -> scan -> Arrow rows -> dataset item.

Each expected ChatML text is written out by hand from the published rules (StreamVLN
`streamvln_train.py` `LazySupervisedDataset` for QA and ScanQA, `dataset/mmc4_dataset.py` for
MMC4, LLaVA-NeXT `process_video_with_decord` for frame choice); the decoded `input_ids` must equal
it, and the labels must learn exactly the assistant messages plus <|im_start|>, <|im_end|>, "\\n".
Media are real files: an mp4 encoded with PyAV here, JPEG folders, an MMC4 jsonl shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import datasets
import numpy as np
import pytest
from PIL import Image
from transformers import SiglipVisionConfig

from streamvln_model.data.datasets.combined import CoTrainingSettings
from streamvln_model.data.formats import mmc4, scanqa, video_qa
from streamvln_model.data.media.video import (
    VideoError,
    VideoInfo,
    order_frame_folder,
    probe_video,
    read_frames,
    time_instruction,
    video_frame_indices,
)
from streamvln_model.model.conversation import prepare_tokenizer
from streamvln_model.model.tokenizer import load_tokenizer
from streamvln_model.model.vision import build_image_processor

IMAGE, IGNORE = -200, -100
IM_START, IM_END, NEWLINE, ASSISTANT = 151644, 151645, 198, 77091
SIDE = 32  # tower resolution of these tests: small pixels, same code path
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def chatml(*turns: tuple[str, str]) -> str:
    return SYSTEM + "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)


@pytest.fixture(scope="module")
def tokenizer_and_spec():
    tokenizer = load_tokenizer()
    return tokenizer, prepare_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def processor():
    return build_image_processor(SiglipVisionConfig(image_size=SIDE))


def settings(**overrides) -> CoTrainingSettings:
    values = dict(frames_upbound=4, force_sample=True, add_time_instruction=True, video_fps=1, num_frames=32)
    return CoTrainingSettings(**{**values, **overrides})


def encode_mp4(path: Path, frames: int = 20, fps: int = 10) -> Path:
    """Frame k is a flat grey of level 10 * k, so a decoded frame tells its index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(frames):
            image = np.full((32, 32, 3), 10 * k, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def grey_folder(folder: Path, levels: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, level in levels.items():
        Image.new("RGB", (24, 24), (level, level, level)).save(folder / name, quality=100)
    return folder


def pixel_levels(images) -> list[int]:
    """The grey level (0..255) of each preprocessed image (SigLIP: x / 127.5 - 1)."""
    return [round((float(image.mean()) + 1) * 127.5) for image in images]


def decoded(tokenizer, spec, input_ids) -> str:
    ids = [spec.image_token_id if token == IMAGE else int(token) for token in input_ids]
    return tokenizer.decode(ids, skip_special_tokens=False)


def assert_labels_learn_only_the_answers(item, tokenizer, answers: list[str]) -> None:
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    starts = [k for k in range(len(ids) - 1) if ids[k] == IM_START and ids[k + 1] == ASSISTANT]
    assert len(starts) == len(answers)
    inside = set()
    for start, answer in zip(starts, answers, strict=True):
        end = ids.index(IM_END, start)
        assert labels[start : end + 1] == ids[start : end + 1]
        assert ids[start + 2] == NEWLINE and tokenizer.decode(ids[start + 3 : end]) == answer
        inside.update(range(start, end + 1))
    for k, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if k not in inside:
            assert label == (token if token in (IM_START, IM_END, NEWLINE) else IGNORE)
    assert IMAGE not in labels


def table(result, features) -> datasets.Dataset:
    assert result.problems == []
    return datasets.Dataset.from_list(result.rows, features=features)


# --- video.py -------------------------------------------------------------------------------------


def test_probe_decodes_the_stream_and_names_a_truncated_file(tmp_path):
    clip = encode_mp4(tmp_path / "clip.mp4")
    assert probe_video(clip) == VideoInfo(frames=20, fps=10.0, duration=2.0)
    data = clip.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=r"half\.mp4"):
        probe_video(half)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(VideoError, match=r"notes\.mp4"):
        probe_video(text)


def test_read_frames_returns_rgb_frames_in_the_asked_order(tmp_path):
    clip = encode_mp4(tmp_path / "clip.mp4")
    frames = read_frames(clip, [19, 0, 5, 5])
    assert all(f.mode == "RGB" and f.size == (32, 32) for f in frames)
    levels = [int(np.asarray(f).mean()) for f in frames]
    assert [round(level / 10) for level in levels] == [19, 0, 5, 5]
    with pytest.raises(VideoError, match="past the decodable end"):
        read_frames(clip, [25])


def test_frame_choice_and_timestamps_follow_the_published_rules():
    info = VideoInfo(frames=20, fps=10.0, duration=2.0)
    # one frame per 1/video_fps seconds: every round(10 / 1) = 10th frame
    assert video_frame_indices(info, 1, 0, False) == ([0, 10], [0.0, 1.0])
    assert video_frame_indices(info, 2, 0, False) == ([0, 5, 10, 15], [0.0, 0.5, 1.0, 1.5])
    # force_sample: exactly frames_upbound, int(linspace(0, 19, 4)) = 0, 6, 12, 19
    assert video_frame_indices(info, 1, 4, True) == ([0, 6, 12, 19], [0.0, 0.6, 1.2, 1.9])
    # more one-per-second frames (2) than the upbound (1): uniform sampling too
    assert video_frame_indices(info, 1, 1, False) == ([0], [0.0])
    assert time_instruction(2.0, [0.0, 1.25]) == (
        "The video lasts for 2.00 seconds, and 2 frames are uniformly sampled from it. "
        "These frames are located at 0.00s,1.25s.Please answer the following questions related to this video."
    )


def test_frame_folders_order_by_number_and_refuse_names_without_one():
    assert order_frame_folder(["10.jpg", "9.jpg", "pose.txt", "100.jpg"]) == (
        ["9.jpg", "10.jpg", "100.jpg"],
        None,
    )
    assert order_frame_folder(["c01_0010.jpg", "c01_0002.jpg"]) == (["c01_0002.jpg", "c01_0010.jpg"], None)
    assert order_frame_folder(["1.png", "0.jpg", "0.png", "1.jpg"]) == (["0.jpg", "1.jpg"], None)  # ScanNet
    assert order_frame_folder(["1.png", "0.png"]) == (["0.png", "1.png"], None)
    assert "no frame number" in order_frame_folder(["a.jpg", "1.jpg"])[1]
    assert "prefixes" in order_frame_folder(["a1.jpg", "b2.jpg"])[1]


# --- QA (task 1) ----------------------------------------------------------------------------------

QUESTION = "<image>\nWhat colour is the screen?"
ANSWER = "It turns from black to grey."


def qa_entries(video: str) -> list[dict]:
    turns = [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]
    return [{"id": "v1", "data_source": "src", "video": video, "conversations": turns}]


def test_qa_video_sample_has_the_time_instruction_and_one_image_per_frame(
    tmp_path, tokenizer_and_spec, processor
):
    tokenizer, spec = tokenizer_and_spec
    encode_mp4(tmp_path / "qa" / "src" / "clip.mp4")
    result = video_qa.scan(qa_entries("clip.mp4"), "/ann/qa.json", 0, str(tmp_path / "qa"))
    assert result.media == [(0, "src/clip.mp4", "video")]
    assert result.rows[0]["sample_id"] == "qa.json#0" and result.rows[0]["kind"] == "video"
    assert result.text_chars == [len(QUESTION) + len(ANSWER)]
    dataset = video_qa.VideoQADataset(
        table(result, video_qa.FEATURES), [str(tmp_path / "qa")], tokenizer, spec, processor, settings()
    )
    item = dataset[0]
    prompt = (
        "<image>" * 4 + "\nThe video lasts for 2.00 seconds, and 4 frames are uniformly sampled from it. "
        "These frames are located at 0.00s,0.60s,1.20s,1.90s.Please answer the following questions "
        "related to this video.\n\nWhat colour is the screen?"
    )
    assert decoded(tokenizer, spec, item["input_ids"]) == chatml(("user", prompt), ("assistant", ANSWER))
    assert_labels_learn_only_the_answers(item, tokenizer, [ANSWER])
    assert item["images"].shape == (4, 3, SIDE, SIDE)
    assert [round(level / 10) for level in pixel_levels(item["images"])] == [0, 6, 12, 19]
    assert item["time_ids"].numel() == 0 and item["task_type"] == 1

    plain = video_qa.VideoQADataset(
        dataset.table, dataset.roots, tokenizer, spec, processor, settings(add_time_instruction=False)
    )
    expected = chatml(("user", "<image>" * 4 + "\nWhat colour is the screen?"), ("assistant", ANSWER))
    assert decoded(tokenizer, spec, plain[0]["input_ids"]) == expected


def test_qa_frame_folder_is_a_two_fps_video_in_frame_number_order(tmp_path, tokenizer_and_spec, processor):
    tokenizer, spec = tokenizer_and_spec
    grey_folder(tmp_path / "qa" / "src" / "shareVideoGPTV" / "v7", {f"{k}.jpg": 20 * k for k in range(12)})
    result = video_qa.scan(qa_entries("shareVideoGPTV/v7"), "qa.json", 0, str(tmp_path / "qa"))
    assert result.media == [(0, "src/shareVideoGPTV/v7", "folder")]
    assert result.rows[0]["frames"][:3] == ["0.jpg", "1.jpg", "2.jpg"]
    dataset = video_qa.VideoQADataset(
        table(result, video_qa.FEATURES),
        [str(tmp_path / "qa")],
        tokenizer,
        spec,
        processor,
        settings(frames_upbound=3),
    )
    item = dataset[0]
    # int(linspace(0, 11, 3)) = 0, 5, 11 at 2 fps; the folder lasts 12 / 2 = 6 s
    prompt = (
        "<image>" * 3 + "\nThe video lasts for 6.00 seconds, and 3 frames are uniformly sampled from it. "
        "These frames are located at 0.00s,2.50s,5.50s.Please answer the following questions "
        "related to this video.\n\nWhat colour is the screen?"
    )
    assert decoded(tokenizer, spec, item["input_ids"]) == chatml(("user", prompt), ("assistant", ANSWER))
    assert pixel_levels(item["images"]) == [0, 100, 220]


def test_qa_scan_names_each_bad_entry(tmp_path):
    encode_mp4(tmp_path / "src" / "clip.mp4")
    good = qa_entries("clip.mp4")[0]
    injected = {
        **good,
        "id": "inj",
        "conversations": [good["conversations"][0], {"from": "gpt", "value": "ok<|im_end|>"}],
    }
    swapped = {**good, "id": "swap", "conversations": list(reversed(good["conversations"]))}
    escape = {**good, "id": "esc", "data_source": "", "video": "../outside.mp4"}
    missing = {**good, "id": "nov", "video": ""}
    memory = {
        **good,
        "id": "mem",
        "conversations": [good["conversations"][0], {"from": "gpt", "value": "see <memory>"}],
    }
    result = video_qa.scan([good, injected, swapped, escape, missing, memory], "qa.json", 0, str(tmp_path))
    assert [row["id"] for row in result.rows] == ["v1"]
    by_sample = {}
    for p in result.problems:
        by_sample[p.sample] = by_sample.get(p.sample, "") + f"{p.field}: {p.reason}\n"
    assert set(by_sample) == {"qa.json#1", "qa.json#2", "qa.json#3", "qa.json#4", "qa.json#5"}
    assert by_sample["qa.json#1"].startswith("entry #1 (id=inj) field 'conversations[1].value': ")
    assert "<|im_end|>" in by_sample["qa.json#1"]
    assert "expected 'human'" in by_sample["qa.json#2"]
    assert "'<image>' where none belongs" in by_sample["qa.json#2"]  # only the first turn may hold it
    assert "'..'" in by_sample["qa.json#3"]
    assert "missing" in by_sample["qa.json#4"]
    assert "<memory>" in by_sample["qa.json#5"]
    assert all(p.file == "qa.json" for p in result.problems)


# --- ScanQA (task 2) ------------------------------------------------------------------------------


def scene(root: Path) -> Path:
    """posed_images/scene0000_00: 25 colour frames (level 8 * k), depth .png and pose .txt files."""
    folder = grey_folder(
        root / "scannet" / "posed_images" / "scene0000_00", {f"{k}.jpg": 8 * k for k in range(25)}
    )
    for k in range(25):
        Image.new("I;16", (4, 4)).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    (folder / "intrinsic.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    return folder


SCAN_QUESTION = "<video>\nWhat is on the table?"
SCAN_ANSWER = "A lamp."


def scanqa_entries() -> list[dict]:
    turns = [{"from": "human", "value": SCAN_QUESTION}, {"from": "gpt", "value": SCAN_ANSWER}]
    return [{"id": "q1", "video": "scannet/posed_images/scene0000_00", "conversations": turns}]


def test_scanqa_takes_every_tenth_frame_then_repeats_to_frames_upbound(
    tmp_path, tokenizer_and_spec, processor
):
    tokenizer, spec = tokenizer_and_spec
    scene(tmp_path)
    result = scanqa.scan(scanqa_entries(), "scanqa_train.json", 2, str(tmp_path))
    assert result.rows[0]["frames"] == ["0.jpg", "10.jpg", "20.jpg"]  # numeric order, .jpg only
    assert result.media == [(0, "scannet/posed_images/scene0000_00", "folder")]
    assert probe_video(tmp_path / result.media[0][1]).frames == 25  # the checker's view: colour frames
    rows = table(result, scanqa.FEATURES)
    roots = ["unused", "unused", str(tmp_path)]  # row root 2: the position in the root list
    # 3 frames, 5 wanted: the list repeated -> 0, 10, 20, 0, 10
    item = scanqa.ScanQADataset(rows, roots, tokenizer, spec, processor, settings(frames_upbound=5))[0]
    expected = chatml(("user", "<image>" * 5 + "\nWhat is on the table?"), ("assistant", SCAN_ANSWER))
    assert decoded(tokenizer, spec, item["input_ids"]) == expected
    assert pixel_levels(item["images"]) == [0, 80, 160, 0, 80]
    assert_labels_learn_only_the_answers(item, tokenizer, [SCAN_ANSWER])
    assert item["task_type"] == 2
    # 3 frames, 2 wanted: stride 3 // 2 = 1 from the first -> 0, 10
    two = scanqa.ScanQADataset(rows, roots, tokenizer, spec, processor, settings(frames_upbound=2))[0]
    assert pixel_levels(two["images"]) == [0, 80]
    # without force_sample: 10 frames, no time instruction whatever add_time_instruction says
    ten = scanqa.ScanQADataset(rows, roots, tokenizer, spec, processor, settings(force_sample=False))[0]
    assert decoded(tokenizer, spec, ten["input_ids"]).count("<image>") == 10 == len(ten["images"])
    assert "seconds" not in decoded(tokenizer, spec, ten["input_ids"])


def test_scanqa_scan_refuses_unnumbered_frames_and_misplaced_placeholders(tmp_path):
    folder = scene(tmp_path)
    (folder / "extra.jpg").write_bytes((folder / "0.jpg").read_bytes())
    good = scanqa_entries()[0]
    twice = {
        **good,
        "id": "two",
        "conversations": [{"from": "human", "value": "<video><video>?"}, good["conversations"][1]],
    }
    image = {
        **good,
        "id": "img",
        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, good["conversations"][1]],
    }
    answer_video = {
        **good,
        "id": "ans",
        "conversations": [good["conversations"][0], {"from": "gpt", "value": "<video>"}],
    }
    result = scanqa.scan([good, twice, image, answer_video], "s.json", 0, str(tmp_path))
    assert result.rows == []
    reasons = {p.sample: p.reason for p in result.problems}
    assert "'extra.jpg' is not named by its step number" in reasons["s.json#0"]
    assert "2 <video>" in reasons["s.json#1"]
    assert "'<image>'" in reasons["s.json#2"]
    assert "'<video>'" in reasons["s.json#3"]


# --- MMC4 (task 3) --------------------------------------------------------------------------------

SENTENCES = ["Intro. ", "A cat sits. ", "It sleeps. ", "A dog runs. ", "The end."]


def test_mmc4_images_open_user_turns_in_sentence_order(tmp_path, tokenizer_and_spec, processor):
    tokenizer, spec = tokenizer_and_spec
    grey_folder(tmp_path / "images", {"dog.jpg": 200, "cat.jpg": 40})
    document = {
        "text_list": SENTENCES,
        "image_info": [
            {"image_name": "images/dog.jpg", "matched_text_index": 3, "matched_sim": 0.3},
            {"image_name": "images/cat.jpg", "matched_text_index": 1, "matched_sim": 0.3},
        ],
        "similarity_matrix": [[0.1] * 5, [0.2] * 5],
    }
    shard = (
        json.dumps(document)
        + "\n{broken\n\n"
        + json.dumps({**document, "text_list": ["An <image> here. ", *SENTENCES[1:]]})
    )
    entries, problems = mmc4.read_jsonl(shard, "/mmc4/docs_00.jsonl")
    assert [n for n, _ in entries] == [1, 4]
    assert [(p.field, p.sample) for p in problems] == [("line 2", "docs_00.jsonl:2")]
    result = mmc4.scan(entries, "/mmc4/docs_00.jsonl", 0, str(tmp_path))
    assert [(p.field, p.sample) for p in result.problems] == [
        ("line 4 field 'text_list[0]'", "docs_00.jsonl:4")
    ]
    assert result.media == [(0, "images/cat.jpg", "image"), (0, "images/dog.jpg", "image")]
    rows = datasets.Dataset.from_list(result.rows, features=mmc4.FEATURES)
    item = mmc4.MMC4Dataset(rows, [str(tmp_path)], tokenizer, spec, processor, settings())[0]
    answers = ["A cat sits. It sleeps. ", "A dog runs. The end."]
    expected = chatml(
        ("user", "Intro. <image>."),
        ("assistant", answers[0]),
        ("user", "<image>."),
        ("assistant", answers[1]),
    )
    assert decoded(tokenizer, spec, item["input_ids"]) == expected
    assert_labels_learn_only_the_answers(item, tokenizer, answers)
    assert pixel_levels(item["images"]) == [40, 200]
    assert item["task_type"] == 3


def test_mmc4_keeps_the_first_six_images_and_checks_their_sentences(tmp_path):
    images = [{"image_name": f"{k}.jpg", "matched_text_index": 6 - k} for k in range(8)]
    document = {"text_list": [f"S{k}. " for k in range(8)], "image_info": images}
    result = mmc4.scan([document], "shard.jsonl", 0, str(tmp_path))
    assert result.rows[0]["images"] == ["5.jpg", "4.jpg", "3.jpg", "2.jpg", "1.jpg", "0.jpg"]
    assert result.rows[0]["matched"] == [1, 2, 3, 4, 5, 6]
    assert mmc4.mmc4_conversation(result.rows[0]["text_list"], result.rows[0]["matched"])[0] == {
        "from": "human",
        "value": "S0. <image>.",
    }
    bad = {"text_list": ["One."], "image_info": [{"image_name": "a.jpg", "matched_text_index": 1}]}
    none = {"text_list": ["One."], "image_info": []}
    result = mmc4.scan([bad, none], "shard.jsonl", 0, str(tmp_path))
    assert result.rows == []
    assert [p.field for p in result.problems] == ["line 1 field 'image_info[0]'", "line 2 field 'image_info'"]
    assert "not a sentence" in result.problems[0].reason


def test_settings_from_the_argument_schema_and_their_problems():
    from streamvln_model.config.arguments import DataArguments

    defaults = CoTrainingSettings.from_arguments(DataArguments())
    assert defaults == CoTrainingSettings(0, False, False, 1.0, 32)
    assert defaults.problems() == []
    forced = CoTrainingSettings.from_arguments(DataArguments(force_sample=True))
    assert [p.field for p in forced.problems()] == ["force_sample"]
