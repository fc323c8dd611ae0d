"""The MLflow pyfunc flavour: a registered StreamVLN version loads with one call and predicts actions.

    policy = mlflow.pyfunc.load_model("models:/streamvln@candidate")
    policy.predict([{"instruction": "...", "current_frame": "frame.jpg", "history_frames": [...]}])

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
        from .inference import NavigationPolicy

        self.policy = NavigationPolicy.from_pretrained(
            context.artifacts[CHECKPOINT_ARTIFACT], base=context.artifacts.get(BASE_ARTIFACT)
        )

    def predict(self, context, model_input, params=None) -> list[dict]:
        records = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        from .inference import parse_actions

        results = []
        for record in records:
            text = self.policy.next_actions(
                record["instruction"], record["current_frame"], list(record.get("history_frames") or [])
            )
            results.append({"text": text, "actions": parse_actions(text)})
        return results


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
    from .saving import TOWER_DIRNAME

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
    from .loading import FULL, base_checkpoint, save_format

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
                pip_requirements=["streamvln-pipeline", "torch==2.13.0"],
            )


def checkpoint_path(downloaded_model_dir: str | Path) -> Path:
    """Where the weights sit inside a downloaded pyfunc model folder."""
    return Path(downloaded_model_dir) / "artifacts" / CHECKPOINT_ARTIFACT
