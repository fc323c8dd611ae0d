"""Synthetic co-training data: each format parses as its published layout, answers are readable
from the pixels, output is deterministic per seed, and the `streamvln synth` commands run."""

from __future__ import annotations

import json
import re
from itertools import groupby
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from PIL import Image

from flows.cli import main
from streamvln_model.synthetic import (
    nearest_colour,
    write_mixture,
    write_mmc4,
    write_scanqa,
    write_video_qa,
)

COUNT_WORDS = ("zero", "one", "two", "three", "four")
STRATEGY = re.compile(r"^(all|(first|end|random):\d+%?)$")


def _runs(colours: list[str]) -> list[str]:
    return [colour for colour, _ in groupby(colours)]


def _decode_mp4(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _folder_frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.iterdir())]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- video QA (LLaVA-Video-178K) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    out = tmp_path_factory.mktemp("qa") / "llava_video"
    summary = write_video_qa(out, videos=5, seed=5, frames=12, size=(48, 32), fps=4, frame_folders=2)
    return out, summary, json.loads(summary.json_path.read_text())


def test_qa_records_have_the_llava_video_fields(qa) -> None:
    out, summary, records = qa
    assert len(records) == 5 and summary.mp4_files == 3 and summary.frame_folders == 2
    for record in records:
        assert list(record) == ["id", "conversations", "data_source", "video"]
        turns = record["conversations"]
        assert len(turns) >= 4 and [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        assert (out / record["data_source"] / record["video"]).exists()  # <root>/<data_source>/<video>
    assert [p.name for p in out.iterdir()] == ["synthetic_v0_1"]
    assert summary.json_path == out / "synthetic_v0_1" / "synthetic_oe_qa_processed.json"
    assert not list(out.parent.glob("*.partial"))


def test_mp4s_decode_to_the_promised_frames_and_frame_folders_sort_by_name(qa) -> None:
    out, _summary, records = qa
    videos = [out / r["data_source"] / r["video"] for r in records]
    assert [v.suffix for v in videos] == [".mp4"] * 3 + [""] * 2
    for video in videos[:3]:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name in {"h264", "libx264", "mpeg4"}
            assert float(stream.average_rate) == 4
        frames = _decode_mp4(video)
        assert len(frames) == 12 and all(f.shape == (32, 48, 3) for f in frames)
    for folder in videos[3:]:
        assert "shareVideoGPTV" in str(folder)  # LLaVA-NeXT reads such paths as frame folders
        names = [p.name for p in sorted(folder.iterdir())]
        assert names == [f"{i:04d}.jpg" for i in range(12)]
        assert Image.open(folder / names[0]).size == (48, 32)


def test_qa_answers_are_read_from_the_pixels(qa) -> None:
    out, _, records = qa
    for record in records:
        video = out / record["data_source"] / record["video"]
        frames = _decode_mp4(video) if video.suffix == ".mp4" else _folder_frames(video)
        colours = _runs([nearest_colour(frame) for frame in frames])
        changes = COUNT_WORDS[len(colours) - 1].capitalize()
        expected = {
            "What colour fills the screen at the start of the video?": f"{colours[0].capitalize()}.",
            "What colour fills the screen at the end of the video?": f"{colours[-1].capitalize()}.",
            "How many times does the colour of the screen change?": f"{changes}.",
            "List the colours of the screen in the order they appear.": ", ".join(colours).capitalize() + ".",
        }
        turns = record["conversations"]
        for question, answer in zip(turns[::2], turns[1::2], strict=True):
            assert expected[question["value"].removeprefix("<image>\n")] == answer["value"]


# --- ScanQA / SQA3D (ScanNet posed_images) -----------------------------------------------------
@pytest.fixture(scope="module")
def scanqa(tmp_path_factory):
    out = tmp_path_factory.mktemp("scanqa") / "ScanNet"
    summary = write_scanqa(out, scenes=3, frames_per_scene=23, seed=2, size=(60, 40))
    return out, summary


def test_scene_frames_are_numbered_by_frame_index_without_padding(scanqa) -> None:
    out, _summary = scanqa
    scenes = sorted((out / "posed_images").iterdir())
    assert [s.name for s in scenes] == ["scene9000_00", "scene9001_00", "scene9002_00"]
    for scene in scenes:
        jpgs = [p.stem for p in scene.glob("*.jpg")]
        assert sorted(jpgs, key=int) == [str(i) for i in range(23)]
        assert sorted(jpgs) != sorted(jpgs, key=int)  # readers must sort numerically
        assert {p.name for p in scene.glob("*.txt")} == {f"{i}.txt" for i in range(23)} | {"intrinsic.txt"}
        for stem in ("0", "7", "22"):
            pose = np.loadtxt(scene / f"{stem}.txt")
            assert pose.shape == (4, 4) and np.allclose(pose[3], [0, 0, 0, 1])
            assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-5)
        intrinsic = np.loadtxt(scene / "intrinsic.txt")
        assert intrinsic.shape == (4, 4) and intrinsic[0, 2] == 30 and intrinsic[1, 2] == 20
        assert Image.open(scene / "0.jpg").size == (60, 40)


def test_scanqa_and_sqa3d_records_point_at_scenes_and_are_answerable_from_one_frame(scanqa) -> None:
    out, summary = scanqa
    scanqa_records = json.loads(summary.scanqa_json.read_text())
    sqa3d_records = json.loads(summary.sqa3d_json.read_text())
    assert len(scanqa_records) == len(sqa3d_records) == 9
    assert all(isinstance(r["id"], int) for r in sqa3d_records)
    for record in scanqa_records + sqa3d_records:
        assert {"id", "video", "conversations"} <= set(record)
        assert (
            re.fullmatch(r"posed_images/scene\d{4}_00", record["video"]) and (out / record["video"]).is_dir()
        )
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<video>\n") and "<image>" not in human["value"]
        # Any frame answers the question: the top rows show the walls, the middle row the objects.
        frame = np.asarray(Image.open(out / record["video"] / "17.jpg").convert("RGB"))
        wall = nearest_colour(frame[:4])
        if "walls" in human["value"]:
            assert gpt["value"] == wall
        else:
            row = [nearest_colour(pixel) for pixel in frame[frame.shape[0] // 2]]
            # Runs of at least 3 px: JPEG can blur a box edge into a 1-2 px run of a third colour.
            boxes = [colour for colour, run in groupby(row) if colour != wall and len(list(run)) >= 3]
            assert gpt["value"] in (boxes[0], COUNT_WORDS[len(boxes)])


def test_scanqa_stride_and_padding_follow_the_options(tmp_path: Path) -> None:
    out = tmp_path / "padded"
    write_scanqa(out, scenes=1, frames_per_scene=4, frame_stride=10, name_width=5, size=(16, 16))
    names = sorted(p.name for p in (out / "posed_images" / "scene9000_00").glob("*.jpg"))
    assert names == ["00000.jpg", "00010.jpg", "00020.jpg", "00030.jpg"]


# --- MMC4 --------------------------------------------------------------------------------------
def test_mmc4_shards_match_the_published_fields_and_images_match_their_sentences(tmp_path: Path) -> None:
    out = tmp_path / "mmc4"
    summary = write_mmc4(out, documents=7, shards=3, seed=4, size=(24, 16))
    assert summary.shard_names == [f"docs_shard_{i}_v3.jsonl" for i in range(3)]
    documents = [json.loads(line) for path in summary.shard_paths for line in path.read_text().splitlines()]
    assert len(documents) == 7
    names = [info["image_name"] for doc in documents for info in doc["image_info"]]
    assert len(set(names)) == len(names) == summary.images
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(names)
    for doc in documents:
        assert {"url", "text_list", "image_info", "similarity_matrix"} <= set(doc)
        matrix = np.asarray(doc["similarity_matrix"])
        assert matrix.shape == (len(doc["image_info"]), len(doc["text_list"]))
        for info, row in zip(doc["image_info"], matrix, strict=True):
            index = info["matched_text_index"]
            assert 0 <= index < len(doc["text_list"])
            assert int(np.argmax(row)) == index and row[index] == info["matched_sim"]
            colour = nearest_colour(
                np.asarray(Image.open(out / "images" / info["image_name"]).convert("RGB"))
            )
            assert f" {colour} " in doc["text_list"][index]


# --- the mixture -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixture") / "stage_two"
    summary = write_mixture(out, seed=7, episodes=3, dagger_episodes=2, videos=3, scenes=2, documents=4)
    return out, summary, yaml.safe_load(summary.yaml_path.read_text())


def test_mixture_yaml_lists_every_group_with_existing_json_paths(mixture) -> None:
    _out, _summary, config = mixture
    assert list(config) == ["QA_datasets", "SCANQA_datasets", "MMC4_datasets"]
    entries = [entry for group in config.values() for entry in group]
    strategies = {entry["sampling_strategy"] for entry in entries}
    assert all(STRATEGY.match(s) for s in strategies) and len({s.split(":")[0] for s in strategies}) >= 2
    for entry in entries:
        assert Path(entry["json_path"]).is_absolute() and Path(entry["json_path"]).is_file()
    sqa3d_entry = config["SCANQA_datasets"][1]
    first = int(sqa3d_entry["sampling_strategy"].split(":")[1])
    assert 1 <= first <= len(json.loads(Path(sqa3d_entry["json_path"]).read_text()))
    qa_entry = config["QA_datasets"][0]
    keywords = qa_entry["sampling_subset"].split(",")
    videos = [r["video"] for r in json.loads(Path(qa_entry["json_path"]).read_text())]
    assert all(any(k in v for k in keywords) for v in videos)


def test_mixture_flags_point_at_every_root(mixture) -> None:
    _out, summary, _ = mixture
    flags = summary.flags
    assert list(flags) == [
        "video_folder",
        "data_path",
        "qa_video_folder",
        "scanqa_video_folder",
        "mmc4_video_folder",
        "multi_task_training",
    ]
    folders = flags["video_folder"].split(",")
    assert len(folders) == 2 and all((Path(f) / "annotations.json").is_file() for f in folders)
    assert Path(flags["data_path"]) == summary.yaml_path.resolve()
    qa_json = json.loads(summary.qa.json_path.read_text())
    assert all((Path(flags["qa_video_folder"]) / r["data_source"] / r["video"]).exists() for r in qa_json)
    scanqa_json = json.loads(summary.scanqa.scanqa_json.read_text())
    assert all((Path(flags["scanqa_video_folder"]) / r["video"]).is_dir() for r in scanqa_json)
    shard = summary.mmc4.shard_paths[0].read_text().splitlines()[0]
    for info in json.loads(shard)["image_info"]:
        assert (Path(flags["mmc4_video_folder"]) / info["image_name"]).is_file()
    assert flags["multi_task_training"] == "True"
    assert summary.command_line().startswith(f"--video_folder {flags['video_folder']} --data_path ")


def test_mixture_paths_can_be_relative_or_under_a_url(tmp_path: Path) -> None:
    small = {"episodes": 1, "dagger_episodes": 1, "videos": 1, "scenes": 1, "documents": 1, "shards": 1}
    url = write_mixture(tmp_path / "a" / "tree", url_prefix="s3://bucket/prefix", **small)
    config = yaml.safe_load(url.yaml_path.read_text())
    for entry in (e for group in config.values() for e in group):
        assert entry["json_path"].startswith("s3://bucket/prefix/")
        assert (url.out / entry["json_path"].removeprefix("s3://bucket/prefix/")).is_file()
    assert all(
        v.startswith("s3://bucket/prefix/") for k, v in url.flags.items() if k != "multi_task_training"
    )

    relative = write_mixture(tmp_path / "b" / "tree", relative_to=tmp_path / "b", **small)
    config = yaml.safe_load(relative.yaml_path.read_text())
    paths = [e["json_path"] for group in config.values() for e in group]
    assert all(not Path(p).is_absolute() and (tmp_path / "b" / p).is_file() for p in paths)
    assert relative.flags["data_path"] == "tree/mixture.yaml"
    with pytest.raises(ValueError, match="exclude each other"):
        write_mixture(tmp_path / "c", relative_to=tmp_path, url_prefix="s3://b/p", **small)
    with pytest.raises(ValueError, match="not a URL"):
        write_mixture(tmp_path / "c", url_prefix="/local/path", **small)
    assert not (tmp_path / "c").exists()


# --- determinism and bad input -----------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    qa = [write_video_qa(tmp_path / f"qa{i}", videos=2, seed=3, frames=4, frame_folders=1) for i in (1, 2)]
    assert _tree(qa[0].out) == _tree(qa[1].out)  # the mp4s too: encoded single-threaded
    other = write_video_qa(tmp_path / "qa3", videos=2, seed=4, frames=4, frame_folders=1)
    assert other.json_path.read_bytes() != qa[0].json_path.read_bytes()
    scanqa = [
        write_scanqa(tmp_path / f"s{i}", scenes=2, frames_per_scene=3, seed=3, size=(16, 16)) for i in (1, 2)
    ]
    assert scanqa[0].scanqa_json.read_bytes() == scanqa[1].scanqa_json.read_bytes()
    assert scanqa[0].sqa3d_json.read_bytes() == scanqa[1].sqa3d_json.read_bytes()
    assert _tree(scanqa[0].out) == _tree(scanqa[1].out)  # frames and poses too
    mmc4 = [write_mmc4(tmp_path / f"m{i}", documents=3, shards=2, seed=3, size=(16, 16)) for i in (1, 2)]
    assert _tree(mmc4[0].out) == _tree(mmc4[1].out)
    small = {"episodes": 1, "dagger_episodes": 1, "videos": 1, "scenes": 1, "documents": 1, "shards": 1}
    yamls = [
        write_mixture(tmp_path / f"x{i}" / "t", seed=9, relative_to=tmp_path / f"x{i}", **small).yaml_path
        for i in (1, 2)
    ]
    assert yamls[0].read_bytes() == yamls[1].read_bytes()


def test_bad_arguments_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"size 63x48.*even"):
        write_video_qa(tmp_path / "q", size=(63, 48))
    with pytest.raises(ValueError, match="frame_folders must be between 0 and videos"):
        write_video_qa(tmp_path / "q", videos=2, frame_folders=3)
    with pytest.raises(ValueError, match="shards"):
        write_mmc4(tmp_path / "m", documents=2, shards=3)
    with pytest.raises(ValueError, match="questions_per_scene"):
        write_scanqa(tmp_path / "s", questions_per_scene=4)
    assert list(tmp_path.iterdir()) == []


# --- the CLI -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["qa", "--videos", "2", "--frames", "4", "--frame-folders", "1"], "wrote 2 videos (1 mp4"),
        (["scanqa", "--scenes", "1", "--frames-per-scene", "3", "--size", "16", "16"], "wrote 1 scenes of 3"),
        (["mmc4", "--documents", "3", "--shards", "2", "--size", "16", "16"], "wrote 3 documents"),
    ],
)
def test_synth_commands_write_and_refuse_to_overwrite(tmp_path: Path, capsys, command, expected) -> None:
    out = tmp_path / command[0]
    assert main(["synth", command[0], str(out), *command[1:]]) == 0
    assert expected in capsys.readouterr().out
    before = _tree(out)
    assert main(["synth", command[0], str(out), *command[1:]]) == 2
    assert f"{out} exists and is not empty" in capsys.readouterr().err
    assert _tree(out) == before
    assert main(["synth", command[0], str(out), *command[1:], "--seed", "1", "--overwrite"]) == 0
    assert _tree(out) != before


def test_synth_mixture_prints_the_training_flags(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mix"
    argv = ["synth", "mixture", str(out), "--episodes", "1", "--dagger-episodes", "1", "--videos", "1"]
    argv += ["--scenes", "1", "--documents", "2", "--url-prefix", "s3://bucket/run1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote stage-two data to {out}")
    assert lines[1].startswith("train with: --video_folder s3://bucket/run1/trajectory_data/R2R,")
    assert "--data_path s3://bucket/run1/mixture.yaml" in lines[1] and lines[1].endswith(
        "--multi_task_training True"
    )
