"""The MLflow pyfunc flavour: a registered StreamVLN version loads with one call and predicts actions.

    policy = mlflow.pyfunc.load_model("models:/streamvln@champion")
    policy.predict([{"instruction": "...", "current_frame": "frame.jpg", "history_frames": [...]}])

Each record: `instruction`; `current_frame` (an image path or an H x W x 3 uint8 array or nested
list); optional `history_frames` (the frames of the earlier steps, paths or arrays; see
inference.py for how the memory frames are chosen). Each answer: `{"text": "↑↑←→", "actions":
[1, 1, 2, 3]}` (action ids as in the annotations: 0 STOP, 1 forward, 2 left, 3 right).

The library travels inside the model (`code_paths`), so loading needs no package of ours; the
pip requirements pin the third-party packages it imports at the versions it was logged with.

The checkpoint folder travels as the model's `checkpoint` artifact, so the raw weights can also
be downloaded and loaded with `streamvln_model.loading.load_trained` (or, for a full save,
`StreamVLNForCausalLM.from_pretrained`). A LoRA or projector-only save needs its base checkpoint:
it travels as the `base` artifact, so a registered version loads on any machine.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow

CHECKPOINT_ARTIFACT = "checkpoint"
BASE_ARTIFACT = "base"  # the base checkpoint of a LoRA / projector-only save


class StreamVLNPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from streamvln_model.registry.inference import NavigationPolicy

        self.policy = NavigationPolicy.from_pretrained(
            context.artifacts[CHECKPOINT_ARTIFACT], base=context.artifacts.get(BASE_ARTIFACT)
        )

    def predict(self, context, model_input, params=None) -> list[dict]:
        from streamvln_model.registry.inference import parse_actions

        results = []
        for i, record in enumerate(_records(model_input)):
            missing = [name for name in ("instruction", "current_frame") if _absent(record.get(name))]
            if missing:
                raise ValueError(f"record [{i}]: no {' or '.join(missing)} (fields: {sorted(record)})")
            history = record.get("history_frames")
            text = self.policy.next_actions(
                record["instruction"], record["current_frame"], [] if _absent(history) else list(history)
            )
            results.append({"text": text, "actions": parse_actions(text)})
        return results


def _records(model_input) -> list[dict]:
    """A DataFrame (mlflow may hand one over), a list of dicts, or one dict -> a list of dicts."""
    if hasattr(model_input, "to_dict"):
        return model_input.to_dict("records")
    return [model_input] if isinstance(model_input, dict) else list(model_input)


def _absent(value) -> bool:
    """None, or the NaN a DataFrame puts where a record lacks a field."""
    return value is None or (isinstance(value, float) and value != value)


# Third-party distributions the library imports when the pyfunc loads and predicts
# (tests/test_pull.py checks this list against what the library's modules import).
INFERENCE_DISTRIBUTIONS = (
    "torch",
    "transformers",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "accelerate",
    "peft",
    "numpy",
    "pillow",
    "pyyaml",
    "fsspec",
    "mlflow",
)


def pip_requirements() -> list[str]:
    """`name==version` of each inference dependency as installed here, without a local version
    label (`torch 2.13.0+cpu` -> `torch==2.13.0`: PyPI has no `+cpu` builds)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in INFERENCE_DISTRIBUTIONS]


def library_folder() -> Path:
    """The `streamvln_model` package folder (the whole library), shipped inside the model as its code."""
    import streamvln_model

    return Path(streamvln_model.__file__).resolve().parent


# What `from_pretrained` needs; trainer state, logs and intermediate checkpoints stay behind.
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "chat_template.jinja",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "adapter_config.json",  # LoRA saves (loading.py)
    "trained_from.json",
)


def stage_model_files(checkpoint: Path, target: Path) -> Path:
    """Copy what loading needs, plus the SigLIP tower folder the published loader opens (if any)."""
    from streamvln_model.checkpoint.layout import TOWER_DIRNAME

    target.mkdir(parents=True)
    for pattern in MODEL_FILE_PATTERNS:
        for path in Path(checkpoint).glob(pattern):
            shutil.copy2(path, target / path.name)
    if (Path(checkpoint) / TOWER_DIRNAME).is_dir():
        shutil.copytree(Path(checkpoint) / TOWER_DIRNAME, target / TOWER_DIRNAME)
    return target


def log_checkpoint_model(checkpoint: str | Path, run_id: str, name: str = "model"):
    """Log the model folder as a pyfunc model into `run_id`; returns mlflow's ModelInfo.

    Built from files only, so the flow host never holds the weights: with explicit
    `pip_requirements` and no `input_example`, mlflow neither infers requirements nor validates
    the model, the two paths on which it would call `load_context` (which loads the weights).
    """
    from streamvln_model.checkpoint.loading import FULL, base_checkpoint, save_format

    with tempfile.TemporaryDirectory() as tmp:
        staged = stage_model_files(Path(checkpoint), Path(tmp) / CHECKPOINT_ARTIFACT)
        artifacts = {CHECKPOINT_ARTIFACT: str(staged)}
        if save_format(checkpoint) != FULL:
            base = stage_model_files(base_checkpoint(checkpoint), Path(tmp) / BASE_ARTIFACT)
            artifacts[BASE_ARTIFACT] = str(base)
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=StreamVLNPyfunc(),
                artifacts=artifacts,
                code_paths=[str(library_folder())],
                pip_requirements=pip_requirements(),
            )


def checkpoint_path(downloaded_model_dir: str | Path) -> Path:
    """Where the weights sit inside a downloaded pyfunc model folder."""
    return Path(downloaded_model_dir) / "artifacts" / CHECKPOINT_ARTIFACT
