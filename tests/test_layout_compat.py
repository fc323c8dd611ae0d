"""Models registered before the library was grouped into folders still load and predict.

`tests/fixtures/pyfunc_previous_layout.tar.gz` is a pyfunc model logged by the flat layout
(commit 891407b): its MLmodel, its `python_model.pkl` (which names the class
`streamvln_model.mlflow_model.StreamVLNPyfunc`) and the library copy it shipped as `code/`. The
weights (~80 MB, the Qwen2 vocabulary rows) are not kept: the test writes the tiny checkpoint into
`artifacts/checkpoint`, the file layout that has not changed.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import mlflow
import numpy as np

from streamvln_model.registry.inference import NavigationPolicy, parse_actions
from streamvln_model.registry.pyfunc import CHECKPOINT_ARTIFACT, StreamVLNPyfunc, stage_model_files

FIXTURE = Path(__file__).parent / "fixtures" / "pyfunc_previous_layout.tar.gz"


def _previous_layout_model(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    model_dir = tmp_path / "model"
    stage_model_files(tiny_checkpoint, model_dir / "artifacts" / CHECKPOINT_ARTIFACT)
    return model_dir


def test_the_fixture_pickles_the_flat_layout_class_path(tiny_checkpoint, tmp_path):
    model_dir = _previous_layout_model(tiny_checkpoint, tmp_path)
    raw = (model_dir / "python_model.pkl").read_bytes()
    assert b"streamvln_model.mlflow_model" in raw  # what an old registered version names
    assert (model_dir / "code" / "streamvln_model" / "mlflow_model.py").is_file()
    assert type(pickle.loads(raw)) is StreamVLNPyfunc  # resolved through the kept import path


def test_a_model_logged_by_the_flat_layout_loads_and_predicts_in_this_process(tiny_checkpoint, tmp_path):
    model_dir = _previous_layout_model(tiny_checkpoint, tmp_path)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    history = [rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8) for _ in range(16)]
    record = {"instruction": "Walk to the kitchen.", "current_frame": frame, "history_frames": history}

    answer = mlflow.pyfunc.load_model(str(model_dir)).predict([record])

    expected = NavigationPolicy.from_pretrained(tiny_checkpoint).next_actions(
        record["instruction"], frame, history
    )
    assert answer == [{"text": expected, "actions": parse_actions(expected)}]


def test_new_models_ship_the_whole_library_as_their_code():
    """`code_paths` must be the package folder, not the folder of the module that logs the model."""
    from streamvln_model.registry.pyfunc import library_folder

    folder = library_folder()
    assert folder.name == "streamvln_model"
    assert (folder / "__init__.py").is_file() and (folder / "registry" / "pyfunc.py").is_file()
    assert (folder / "mlflow_model.py").is_file()  # the class path older models pickled
