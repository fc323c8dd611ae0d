"""A registered model, pulled and used where the repository is not installed.

* `streamvln pull models:/n@alias DEST` in a fresh process: downloaded, verified, the checkpoint
  folder printed; an unknown alias is exit 2 with a message naming the model's aliases.
* `mlflow.pyfunc.load_model("models:/n@alias").predict(...)` in a fresh process that cannot import
  the repository: the library comes from the model's own code, and the answer for a frame with
  history equals `NavigationPolicy`'s greedy answer computed here.
* The policy asks exactly what training shows: the same prompt ids and the same frames, in the
  same order, as the dataset's first turn of a sample with history.
* `resolve_model` downloads a version once; later calls use the cache.
"""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from streamvln_model.registry import pyfunc as mlflow_model
from streamvln_model.registry.inference import NavigationPolicy, parse_actions
from streamvln_model.registry.models import UnknownModelError, registry_key, resolve_model
from tests.helpers import mlflow_tracking_at, register_version

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "streamvln-pull"
ALIAS = "field"

# A fresh interpreter that cannot import the repository's `streamvln_model` (the editable install
# is taken out): what it predicts comes from the code shipped inside the registered model.
FRESH_PREDICT = r"""
import json, sys
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
try:
    import streamvln_model
    raise SystemExit("streamvln_model importable before the model loaded: " + streamvln_model.__file__)
except ImportError:
    pass
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
policy = mlflow.pyfunc.load_model(sys.argv[2])
answer = policy.predict([json.load(open(sys.argv[3]))])
import streamvln_model
print(json.dumps({"answer": answer, "library": streamvln_model.__file__}))
"""


@pytest.fixture(scope="module")
def registered(mlflow_server, trained_models):
    """The good model of `trained_models` (shared with tests/test_promotion.py), registered and aliased."""
    with mlflow_tracking_at(mlflow_server.uri):
        client = mlflow.MlflowClient(mlflow_server.uri)
        version = register_version(client, MODEL_NAME, trained_models.good, trained_models.train)
        client.set_registered_model_alias(MODEL_NAME, ALIAS, version)
        yield trained_models, version


def _observation(models) -> dict:
    """A held-out frame as an array (nested list) and the 16 earlier frames as paths."""
    episode = json.loads((models.heldout / "annotations.json").read_text())[0]
    frames = sorted((models.heldout / episode["video"] / "rgb").glob("*.jpg"))
    assert len(frames) > 17, "an episode of at least 18 steps"
    current = np.asarray(Image.open(frames[16]).convert("RGB"))
    return {
        "instruction": episode["instructions"][0],
        "current_frame": current.tolist(),
        "history_frames": [str(p) for p in frames[:16]],
    }


@pytest.mark.slow  # `trained_models`: two 200-step trainings
def test_pull_prints_a_verified_checkpoint_and_refuses_unknown_aliases(registered, mlflow_server, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "pull",
        f"models:/{MODEL_NAME}@{ALIAS}",
        str(tmp_path / "dest"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder == tmp_path / "dest" / "artifacts" / "checkpoint"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not list(tmp_path.glob(".dest.download-*"))  # downloaded aside, renamed when complete

    command[-2:] = [f"models:/{MODEL_NAME}@nosuchalias", str(tmp_path / "other")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"has no alias 'nosuchalias' (its aliases: {ALIAS} -> " in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "other").exists()


@pytest.mark.slow  # `trained_models`: two 200-step trainings
def test_pyfunc_in_a_fresh_process_answers_as_the_policy(registered, mlflow_server, tmp_path):
    models, _ = registered
    record = _observation(models)
    policy = NavigationPolicy.from_pretrained(models.good)
    expected = policy.next_actions(
        record["instruction"], np.asarray(record["current_frame"], dtype=np.uint8), record["history_frames"]
    )
    actions = parse_actions(expected)
    assert 1 <= len(actions) <= 4 and set(actions) <= {0, 1, 2, 3}, expected

    (tmp_path / "record.json").write_text(json.dumps(record))
    command = [sys.executable, "-c", FRESH_PREDICT, mlflow_server.uri, f"models:/{MODEL_NAME}@{ALIAS}",
               str(tmp_path / "record.json")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answer"] == [{"text": expected, "actions": actions}]
    assert "/code/streamvln_model/" in result["library"], result["library"]


@pytest.mark.slow  # `trained_models`: two 200-step trainings
def test_policy_prompt_and_frames_are_the_training_sample(registered):
    from streamvln_model.data.datasets.navigation import VLNActionDataset
    from streamvln_model.data.formats.annotations import load_episodes
    from streamvln_model.data.index.tables import build_index

    models, _ = registered
    policy = NavigationPolicy.from_pretrained(models.good)
    index, _ = build_index(load_episodes(str(models.heldout)), 32, 8, 4)
    dataset = VLNActionDataset(index, policy.tokenizer, policy.token_spec, policy.image_processor)
    with_history = next(i for i in range(len(dataset)) if dataset.plan(i).start > 0)
    for i in (0, with_history):
        plan = dataset.plan(i)
        prompt = policy.prompt_ids(plan.instruction, bool(plan.history_frames), random.Random(f"0:{i}"))
        assert plan.input_ids[: len(prompt)] == prompt
        assert plan.labels[len(prompt)] != -100  # the answer's first action follows
        pixels = policy.pixels(plan.current_frames[0], plan.history_frames)
        assert torch.equal(pixels, dataset[i]["images"][: len(plan.history_frames) + 1])
    # Every earlier frame (step 0 first) selects the same memory frames as the dataset.
    plan = dataset.plan(with_history)
    row = index.row(with_history)
    folder = Path(plan.current_frames[0]).parent
    every = [str(folder / name) for name in row["frames"][: plan.start]]
    assert torch.equal(
        policy.pixels(plan.current_frames[0], every),
        policy.pixels(plan.current_frames[0], plan.history_frames),
    )
    with pytest.raises(ValueError, match=r"history_frames: 5 frames give 5 memory frames"):
        policy.pixels(plan.current_frames[0], every[:5])


@pytest.mark.slow  # `trained_models`: two 200-step trainings
def test_resolve_model_downloads_a_version_once(registered, mlflow_server, tmp_path):
    _, version = registered
    cache = tmp_path / "cache"
    first = Path(resolve_model(f"models:/{MODEL_NAME}@{ALIAS}", cache_dir=cache))
    server = cache / registry_key(mlflow_server.uri)
    assert first == server / MODEL_NAME / version / "artifacts" / "checkpoint"
    (first / "sentinel").write_text("a second download would replace this folder")
    for uri in (f"models:/{MODEL_NAME}@{ALIAS}", f"models:/{MODEL_NAME}/{version}"):
        assert Path(resolve_model(uri, cache_dir=cache)) == first
    assert (first / "sentinel").is_file()
    assert sorted(p.name for p in (server / MODEL_NAME).iterdir()) == [version]  # nothing left aside
    assert resolve_model(str(first)) == str(first)  # a local folder passes through
    with pytest.raises(UnknownModelError, match="no registered model 'no-such-model'"):
        resolve_model("models:/no-such-model@champion", cache_dir=cache)


def _normal(distribution: str) -> str:
    """A distribution name as pip compares them (PEP 503): `huggingface_hub` is `huggingface-hub`."""
    return distribution.lower().replace("_", "-").replace(".", "-")


def _module_imports(path: Path) -> set[str]:
    """Top-level names a module imports when it loads (function-level imports are lazy)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


# The library modules the pyfunc loads (the rest of the package travels along unused).
LOADED_MODULES = r"""
import json, sys
import streamvln_model.registry.inference, streamvln_model.checkpoint.loading, streamvln_model.registry.pyfunc
print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "streamvln_model")))
"""


@pytest.mark.processes  # a fresh interpreter imports the inference path
def test_pip_requirements_pin_what_the_library_imports():
    requirements = mlflow_model.pip_requirements()
    pinned = {_normal(line.split("==")[0]): line.split("==")[1] for line in requirements}
    assert not any("streamvln" in name for name in pinned)
    for name, pin in pinned.items():
        assert pin == version(name).split("+")[0]  # installed here, without a local label
    # Every third-party package a module of the inference path imports at load time is pinned.
    done = subprocess.run([sys.executable, "-c", LOADED_MODULES], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = [Path(f) for f in json.loads(done.stdout.strip().splitlines()[-1])]
    assert Path(mlflow_model.__file__) in files
    imported = set().union(*(_module_imports(f) for f in files))
    third_party = imported - set(sys.stdlib_module_names) - {"streamvln_model", "__future__"}
    distributions = packages_distributions()
    unpinned = [n for n in third_party if not {_normal(d) for d in distributions.get(n, [n])} & set(pinned)]
    assert not unpinned, unpinned
