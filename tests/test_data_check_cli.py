"""`streamvln data check` with `--video_folder` alone, with a preset, and on bad data; preset dialects.

In-process (`flows.cli.main`), no server: the data check never needs Prefect (one subprocess
test proves it does not even import it).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from tests.helpers import copy_dataset, read_annotations

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"


@pytest.fixture
def data(synthetic_data, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STREAMVLN_CACHE_DIR", str(tmp_path / "cache"))  # the media-check cache
    return copy_dataset(synthetic_data, tmp_path / "data")


def test_video_folder_alone_checks_streamvln_samples_and_prints_the_report(data, capsys):
    assert main(["data", "check", "--workers", "1", "--video_folder", str(data)]) == 0
    out = capsys.readouterr().out
    assert "# Data validation: passed" in out and "Problems: 0" in out
    assert f"| {data} | video_folder[0] | navigation | {len(read_annotations(data))} |" in out


def test_unnamed_shape_flags_are_streamvlns_and_named_ones_win():
    from flows.presets import command_arguments
    from streamvln_model.config.sample_shape import STREAMVLN_SHAPE, SampleShape
    from streamvln_model.data.validation.check import DataSettings

    bare = command_arguments(None, ["--video_folder", "d"])
    assert (bare.data.num_history, bare.data.num_future_steps) == (None, 1)  # the published parser
    settings = DataSettings.of(vars(bare.data), vars(bare.training), given=bare.given)
    assert settings.shape == STREAMVLN_SHAPE
    named = command_arguments(None, ["--video_folder", "d", "--num_future_steps", "2"])
    assert SampleShape.from_arguments(named.data, named.given) == SampleShape(32, 8, 2)


def test_a_corrupted_frame_exits_2_naming_the_file(data, capsys):
    episode = read_annotations(data)[1]
    frame = sorted((data / episode["video"] / "rgb").iterdir())[3]
    frame.write_bytes(frame.read_bytes()[:100])  # truncated
    assert main(["data", "check", "--workers", "1", "--video_folder", str(data)]) == 2
    captured = capsys.readouterr()
    assert f"{frame}: frame: truncated" in captured.err
    assert captured.err.startswith("streamvln data check: error: ")
    assert "# Data validation: failed" in captured.out


def test_a_bad_annotation_exits_2_naming_the_file(data, capsys):
    episodes = read_annotations(data)
    del episodes[0]["actions"]
    (data / "annotations.json").write_text(json.dumps(episodes))
    assert main(["data", "check", "--workers", "1", "--video_folder", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data / 'annotations.json'}" in err and "actions" in err


def test_the_shipped_tiny_preset_is_checked_as_is(data, tmp_path, monkeypatch, capsys):
    """`streamvln data check configs/tiny_cpu.yaml`: its relative `work/data`, from where it runs."""
    (tmp_path / "work").mkdir()
    shutil.move(data, tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["data", "check", str(CONFIGS / "tiny_cpu.yaml"), "--workers", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "passed" and report["roots"][0]["location"].endswith("work/data")


def test_a_folder_instead_of_a_preset_names_the_fix(data, capsys):
    assert main(["data", "check", str(data)]) == 2
    assert f"{data}: a folder, not a preset. Fix: --video_folder {data}" in capsys.readouterr().err


def test_a_flag_overrides_the_preset(data, capsys):
    config = str(CONFIGS / "stage_one.yaml")  # its video_folder is a placeholder
    assert main(["data", "check", config, "--video_folder", str(data), "--workers", "1"]) == 0
    assert "# Data validation: passed" in capsys.readouterr().out
    assert main(["data", "check", config, "--workers", "1"]) == 2
    assert "data/trajectory_data/R2R/annotations.json: missing" in capsys.readouterr().err


@pytest.mark.processes  # a fresh interpreter: the only way to see what it imports
def test_the_data_check_does_not_import_prefect(synthetic_data, tmp_path):
    script = (
        "import sys; from flows.cli import main; "
        f"code = main(['data', 'check', '--workers', '1', '--video_folder', {str(synthetic_data)!r}]); "
        "assert code == 0, code; assert 'prefect' not in sys.modules, 'prefect was imported'"
    )
    env = {"STREAMVLN_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


# --- preset dialects -------------------------------------------------------------------------------
def _flat(grouped_file: Path, target: Path) -> Path:
    """The same preset in the deprecated flat form: every training group's keys under `request:`."""
    sections = yaml.safe_load(grouped_file.read_text())
    request = {k: v for group in ("model", "data", "training") for k, v in sections.pop(group).items()}
    target.write_text(yaml.safe_dump({"request": request, **sections}, sort_keys=False))
    return target


@pytest.mark.parametrize("name", ["tiny_cpu", "tiny_stage_two", "stage_one", "stage_two"])
def test_a_flat_request_preset_still_loads_with_a_warning(name, tmp_path, caplog):
    from flows.presets import preset_parameters
    from tasks.parameters import TrainRequest

    grouped = preset_parameters(CONFIGS / f"{name}.yaml")
    flat_file = _flat(CONFIGS / f"{name}.yaml", tmp_path / f"{name}.yaml")
    with caplog.at_level(logging.WARNING, logger="streamvln.presets"):
        flat = preset_parameters(flat_file)
        preset_parameters(flat_file)  # warned once per file
    warnings = [r.getMessage() for r in caplog.records if r.name == "streamvln.presets"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{flat_file}: warning: the flat 'request' section is deprecated")
    assert (
        "model: model_name_or_path" in warnings[0] and f"python -m flows.presets {flat_file}" in warnings[0]
    )
    assert TrainRequest(**flat["request"]) == TrainRequest(**grouped["request"])
    assert (flat["launch"], flat["tracking"]) == (grouped["launch"], grouped["tracking"])


def test_a_flag_in_the_wrong_group_or_an_unknown_one_is_refused(tmp_path):
    from flows.presets import load_preset

    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"num_history": 8}, "training": {"learnig_rate": 1.0}, "request": {}})
    )
    _, problems = load_preset(path)
    wrong_group = "model: 'num_history' belongs in the 'data' group (as in the form). Fix: move it there"
    assert f"{path}: {wrong_group}" in problems
    assert f"{path}: training: 'learnig_rate': unknown flag. Fix: did you mean 'learning_rate'?" in problems
    assert any("both a flat 'request' section and the groups" in p for p in problems)


def test_the_grouped_form_is_what_python_m_flows_presets_prints(tmp_path, capsys):
    from flows.presets import _print_grouped, preset_parameters

    flat_file = _flat(CONFIGS / "stage_two.yaml", tmp_path / "flat.yaml")
    _print_grouped(str(flat_file))
    converted = tmp_path / "converted.yaml"
    converted.write_text(capsys.readouterr().out)
    assert list(yaml.safe_load(converted.read_text())) == ["model", "data", "training", "launch", "tracking"]
    assert preset_parameters(converted) == preset_parameters(CONFIGS / "stage_two.yaml")


# --- data preview takes the preset too ----------------------------------------------------------------
def test_data_preview_takes_a_preset_and_its_flags_win(data, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "work").mkdir()
    shutil.move(data, tmp_path / "work" / "data")
    (tmp_path / "work" / "tiny-init").symlink_to(tiny_checkpoint)  # the preset's checkpoint: its tokenizer
    monkeypatch.chdir(tmp_path)
    preset = str(CONFIGS / "tiny_cpu.yaml")
    assert main(["data", "preview", preset, "--num", "2", "--json"]) == 0
    from_preset = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    bare = ["data", "preview", "--video_folder", "work/data", "--tokenizer", str(tiny_checkpoint)]
    assert main([*bare, "--num", "2", "--json"]) == 0  # StreamVLN's shape, as the preset's
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == from_preset
    assert main(["data", "preview", preset, "--num", "1", "--json", "--num_future_steps", "2"]) == 0
    first = json.loads(capsys.readouterr().out)  # a current frame every 2 steps instead of 4
    assert len(first["current_frames"]) > len(from_preset[0]["current_frames"])
    assert main(["data", "preview", "--video_folder", "work/data"]) == 2
    assert "--tokenizer: give the tokenizer folder" in capsys.readouterr().err


# --- train takes published flags after the preset ------------------------------------------------------
def test_train_flags_after_the_preset_win_over_it(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """`streamvln train CONFIG --flag value`: one request, checked by preflight before Prefect starts."""
    import flows.demo
    from flows.presets import argv_flags, preset_parameters, with_flags

    request = preset_parameters(CONFIGS / "stage_one.yaml")["request"]
    flags = argv_flags(["--video_folder", "s3://b/r2r", "--max_steps", "2", "--tf32", "false"])
    merged = with_flags(request, flags)
    assert (merged["video_folder"], merged["max_steps"], merged["extra_args"]["tf32"]) == (
        "s3://b/r2r",
        2,
        False,
    )
    assert merged["num_history"] == request["num_history"]  # the preset's, kept
    assert argv_flags(["--no_gradient_checkpointing"]) == {"gradient_checkpointing": False}

    monkeypatch.setattr(flows.demo, "configure_embedded", lambda *args, **kwargs: None)
    preset = str(_flat(CONFIGS / "tiny_cpu.yaml", tmp_path / "flat.yaml"))  # either dialect
    model = ["--model_name_or_path", str(tiny_checkpoint)]
    assert main(["train", preset, *model, "--num_history", "5", "--plan-only"]) == 2
    assert "--num_history=5 does not divide --num_frames=32" in capsys.readouterr().err
    assert main(["train", preset, "--learnig_rate", "1"]) == 2
    assert "learnig_rate" in capsys.readouterr().err
