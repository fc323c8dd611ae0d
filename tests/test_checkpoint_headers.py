"""The one safetensors-header checker (streamvln_model/checkpoint/headers.py): a weight that does
not fit is said the same way before training (preflight's checkpoint check) and after it (the
flow's saved-files check), for full and partial saves alike. Headers only, no training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamvln_model.checkpoint.headers import check_saved_files, shape_problems
from streamvln_model.checkpoint.layout import SavedModelError
from streamvln_model.checkpoint.loading import PROJECTOR, PROJECTOR_WEIGHTS, write_record
from streamvln_model.config.arguments import resolve_flags
from streamvln_model.config.preflight import checkpoint_report

PROJECTOR_WEIGHT = "model.mm_projector.2.weight"


def _with_wrong_shape(tiny_checkpoint: Path, folder: Path) -> tuple[Path, str]:
    shutil.copytree(tiny_checkpoint, folder)
    weights = load_file(folder / "model.safetensors")
    rows, columns = weights[PROJECTOR_WEIGHT].shape
    weights[PROJECTOR_WEIGHT] = torch.zeros(rows, columns + 1)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    message = (
        f"{folder}: weight {PROJECTOR_WEIGHT!r} has shape [{rows}, {columns + 1}] in the checkpoint but "
        f"the config expects [{rows}, {columns}]"
    )
    return folder, message


def test_preflight_and_the_saved_files_check_report_a_wrong_shape_alike(tiny_checkpoint, tmp_path):
    folder, message = _with_wrong_shape(tiny_checkpoint, tmp_path / "ckpt")
    recipe = {"version": "qwen_1_5", "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2}
    arguments = resolve_flags(
        {"model_name_or_path": str(folder), "output_dir": str(tmp_path / "out"), **recipe}
    )
    before = [p for p in checkpoint_report(arguments)[0] if p.startswith(message)]
    assert len(before) == 1
    with pytest.raises(SavedModelError) as after:
        check_saved_files(folder)
    assert before[0] in str(after.value).splitlines()


def test_a_partial_save_is_checked_by_the_same_checker(tiny_checkpoint, tmp_path):
    """A projector-only save whose projector does not fit its base: the same wording, naming the file."""
    out = tmp_path / "projector-save"
    out.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint / name, out / name)
    weight = load_file(tiny_checkpoint / "model.safetensors")[PROJECTOR_WEIGHT]
    save_file({PROJECTOR_WEIGHT: torch.zeros(weight.shape[0], weight.shape[1] + 1)}, out / PROJECTOR_WEIGHTS)
    write_record(out, PROJECTOR, tiny_checkpoint, torch.float32)
    with pytest.raises(SavedModelError, match="does not fit its base") as err:
        check_saved_files(out)
    assert f"{out / PROJECTOR_WEIGHTS}: weight {PROJECTOR_WEIGHT!r} has shape" in str(err.value)
    save_file({PROJECTOR_WEIGHT: torch.zeros(weight.shape)}, out / PROJECTOR_WEIGHTS)
    assert check_saved_files(out) == {"unexpected": []}


def test_shape_problems_names_missing_reshaped_and_unknown_weights():
    expected = {"a": (2, 3), "b": (4,), "tied": (1,)}
    stored = {"a": (2, 4), "c": (1,)}
    problems, unexpected = shape_problems("f", stored, expected, skip={"tied"}, strict=True)
    assert unexpected == ["c"]
    assert [p.split(". Fix:")[0] for p in problems] == [
        "f: weight 'a' has shape [2, 4] in the checkpoint but the config expects [2, 3]",
        "f: checkpoint lacks weight 'b'",
        "f: weight 'c' is no weight of the model",
    ]
    assert shape_problems("f", stored, expected, complete=False)[0][1:] == []  # only the shape


def test_the_model_builder_keeps_no_header_checker_of_its_own():
    import streamvln_model.model.builder as builder

    assert not {"checkpoint_problems", "checkpoint_shapes", "checkpoint_keys"} & set(vars(builder))
