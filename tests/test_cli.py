"""The `streamvln` console script, run as a real subprocess (offline), on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from streamvln_model.model.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tasks.training import LAUNCHER_FAILED, root_cause
from tests.helpers import copy_dataset, read_annotations

pytestmark = pytest.mark.processes  # every test runs the `streamvln` console script (or torchrun)

STREAMVLN = Path(sys.executable).parent / "streamvln"
TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
NUM_FRAMES, NUM_HISTORY, NUM_FUTURE = 32, 8, 4


def streamvln(
    *args: str | Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(STREAMVLN), *map(str, args)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synth_trajectories_writes_the_published_layout(tmp_path):
    out = tmp_path / "traj"
    args = ("--episodes", 3, "--min-steps", 20, "--max-steps", 70, "--image-size", 64, 48, "--seed", 1)
    done = streamvln("synth", "trajectories", out, *args)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 episodes" in done.stdout
    episodes = read_annotations(out)
    assert len(episodes) == 3
    for episode in episodes:
        assert 20 <= len(episode["actions"]) <= 70
        frames = sorted((out / episode["video"] / "rgb").iterdir())
        assert len(frames) == len(episode["actions"])
        with Image.open(frames[0]) as image:
            assert image.size == (64, 48)

    before = _files(out)
    again = streamvln("synth", "trajectories", out, *args)
    assert again.returncode == 2
    assert "annotations.json already exists" in again.stderr and "Traceback" not in again.stderr
    assert _files(out) == before


def test_synth_checkpoint_writes_a_loadable_folder_and_never_overwrites(tmp_path):
    out = tmp_path / "ckpt"
    done = streamvln("synth", "checkpoint", out)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json"} <= names
    assert names & {"tokenizer.json", "vocab.json"}
    assert json.loads((out / "config.json").read_text())["architectures"] == ["StreamVLNForCausalLM"]

    before = _files(out)
    again = streamvln("synth", "checkpoint", out)
    assert again.returncode == 2
    assert f"streamvln synth checkpoint: error: {out} exists and is not empty" in again.stderr
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert _files(out) == before


def _expected_samples(data: Path) -> list[tuple[str, str, int]]:
    """(episode id, instruction, chunk start) of every sample, in index order."""
    return [
        (str(episode["id"]), instruction, start)
        for episode in read_annotations(data)
        for instruction in episode["instructions"]
        for start in range(0, len(episode["actions"]), NUM_FRAMES)
    ]


def test_data_preview_json_lists_every_sample(synthetic_data, tiny_checkpoint):
    done = streamvln("data", "preview", "--video_folder", synthetic_data, "--tokenizer", tiny_checkpoint,
                     "--num", 0, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    expected = _expected_samples(synthetic_data)
    assert [(r["episode_id"], r["instruction"], r["start"]) for r in records] == expected
    videos = {str(e["id"]): synthetic_data / e["video"] / "rgb" for e in read_annotations(synthetic_data)}
    assert any(r["history_frames"] for r in records), "6 episodes of 20-70 steps include a second chunk"
    for record in records:
        assert {"input_ids", "labels", "history_frames", "current_frames", "instruction"} <= set(record)
        assert len(record["input_ids"]) == len(record["labels"])
        assert any(label != IGNORE_INDEX for label in record["labels"])
        assert len(record["history_frames"]) == (0 if record["start"] == 0 else NUM_HISTORY)
        assert record["current_frames"] and len(record["current_frames"]) <= NUM_FRAMES // NUM_FUTURE
        for frame in record["history_frames"] + record["current_frames"]:
            assert Path(frame).is_file() and Path(frame).parent == videos[record["episode_id"]].resolve()
        assert record["input_ids"].count(IMAGE_TOKEN_INDEX) == len(record["current_frames"])


def test_data_preview_text_shows_instruction_and_learned_spans(synthetic_data, tiny_checkpoint):
    done = streamvln("data", "preview", "--video_folder", synthetic_data, "--tokenizer", tiny_checkpoint,
                     "--num", 2)  # fmt: skip
    assert done.returncode == 0, done.stderr
    first_instruction = read_annotations(synthetic_data)[0]["instructions"][0]
    assert f"instruction: {first_instruction}" in done.stdout
    assert done.stdout.count("| instruction: ") == 2
    assert "⟦" in done.stdout and "⟧" in done.stdout
    assert "<image>" in done.stdout


def test_bad_input_exits_2_naming_the_file(tmp_path, tiny_checkpoint):
    source = tmp_path / "no_annotations"
    (source / "images").mkdir(parents=True)
    done = streamvln("data", "preview", "--video_folder", source, "--tokenizer", tiny_checkpoint, "--json")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"{source.resolve()}/annotations.json: missing" in done.stderr
    assert done.stderr.startswith("streamvln data preview: error: 1 data problem(s)")
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_config_that_is_not_yaml_exits_2_naming_the_file_and_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("request:\n  model_name_or_path: [work/tiny-init\n  output_dir: out\n")
    done = streamvln("train", config)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "streamvln train: error:" in done.stderr and str(config) in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""

    debug = streamvln("--debug", "train", config)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr

    config.write_text(yaml.safe_dump({"launch": {"nproc_per_node": 0}}))  # pydantic refuses it
    refused = streamvln("train", config)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert refused.stderr.startswith("streamvln train: error:") and "validation error" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_torchrun_failure_summary_names_the_failing_rank(tmp_path):
    """The real summary of the installed torch: rank 1 exits with 3 while rank 0 still runs."""
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(
        "import os, sys, time\nif os.environ['RANK'] == '1':\n    sys.exit(3)\ntime.sleep(30)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).splitlines()
    marker = next(i for i, line in enumerate(lines) if "Root Cause (first observed failure)" in line)
    assert root_cause(lines[marker:]) == (1, 3)
    # Where torchrun's own report starts (the tail of the workers' output ends there).
    assert [line for line in lines if LAUNCHER_FAILED.search(line)] == [
        line for line in lines if "failed (exitcode: 3) local_rank: 1" in line
    ]


def test_failed_training_exits_1_naming_the_rank_and_the_log(
    prefect_harness, tiny_checkpoint, synthetic_data, tmp_path
):
    # Frames corrupted after the data stage checked them (same size and mtime, so the cached plan
    # stands): the worker is the first to decode them again, and fails.
    data = copy_dataset(synthetic_data, tmp_path / "data")
    preset = yaml.safe_load(TINY_PRESET.read_text())
    output_dir = tmp_path / "out"
    preset["model"] |= {"model_name_or_path": str(tiny_checkpoint)}
    preset["data"] |= {"video_folder": str(data)}
    preset["training"] |= {"output_dir": str(output_dir), "max_steps": 1}
    preset["launch"] |= {"nproc_per_node": 1}
    preset["tracking"] = {"experiment_name": "cli-failures", "model_name": "never-registered"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(preset))

    env = {
        "PREFECT_API_URL": prefect_harness.api_url,
        "PREFECT_HOME": str(prefect_harness.home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_harness.results_path),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    planned = streamvln("train", config, "--plan-only", timeout=600, env=env)
    assert planned.returncode == 0, planned.stderr[-3000:]
    for frame in data.rglob("*.jpg"):
        stat = frame.stat()
        frame.write_bytes(b"not a jpeg".ljust(stat.st_size, b"\0"))
        os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    done = streamvln("train", config, timeout=600, env=env)
    assert done.returncode == 1, (done.stdout, done.stderr[-3000:])
    report = done.stderr[done.stderr.rindex("streamvln train: ") :]
    assert report.startswith("streamvln train: training failed on rank 0 (exit code 1); last lines:\n")
    log_path = Path(report.rstrip().rsplit("full log: ", 1)[1])  # in this run's folder under output_dir
    assert log_path.name == "train.log" and log_path.parent.parent == output_dir.resolve()
    assert "cannot identify image file" in report  # the worker's own error, from the log's tail
    assert "ChildFailedError" not in report  # torchrun's own traceback stays in the log


def test_data_check_prints_the_report_and_exits_2_on_refused_data(synthetic_data, tiny_checkpoint, tmp_path):
    """`streamvln data check <training flags>`: the validation report on stdout; refused data
    exits 2 naming the file; `--max_invalid_fraction` quarantines by name instead."""
    data = copy_dataset(synthetic_data, tmp_path / "data")
    flags = ["--video_folder", str(data), "--num_history", "8", "--num_future_steps", "4"]
    flags += ["--model_name_or_path", str(tiny_checkpoint), "--model_max_length", "4096"]
    env = {"STREAMVLN_CACHE_DIR": str(tmp_path / "cache")}
    good = streamvln("data", "check", "--json", "--workers", "1", *flags, env=env)
    assert good.returncode == 0, good.stderr[-2000:]
    report = json.loads(good.stdout)
    episodes = len(read_annotations(data))
    assert report["status"] == "passed" and report["problems"] == []
    assert report["tasks"] == {"navigation": episodes} and sum(report["tokens"].values()) == episodes

    episode = read_annotations(data)[1]
    frame = sorted((data / episode["video"] / "rgb").iterdir())[3]
    frame.write_bytes(frame.read_bytes()[:100])  # truncated
    refused = streamvln("data", "check", "--workers", "1", *flags, env=env)
    assert refused.returncode == 2
    assert f"{frame}: frame: truncated" in refused.stderr
    assert "# Data validation: failed" in refused.stdout

    allowed = streamvln("data", "check", "--json", *flags, "--max_invalid_fraction", "0.5", env=env)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert json.loads(allowed.stdout)["quarantined"] == [f"video_folder[0]:{episode['id']}"]
