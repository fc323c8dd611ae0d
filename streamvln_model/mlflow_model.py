"""The MLflow pyfunc flavour: a registered StreamVLN version loads with one call and predicts actions.

    policy = mlflow.pyfunc.load_model("models:/streamvln@candidate")
    policy.predict([{"instruction": "...", "current_frame": "frame.jpg", "history_frames": [...]}])

The checkpoint folder travels as the model's `checkpoint` artifact, so the raw weights can also
be downloaded and loaded with `StreamVLNForCausalLM.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

CHECKPOINT_ARTIFACT = "checkpoint"


class StreamVLNPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from .inference import NavigationPolicy

        self.policy = NavigationPolicy.from_pretrained(context.artifacts[CHECKPOINT_ARTIFACT])

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


def log_checkpoint_model(checkpoint: str | Path, run_id: str, name: str = "model"):
    """Log the folder as a pyfunc model into `run_id` (left in its state); returns the ModelInfo."""
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=StreamVLNPyfunc(),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
            pip_requirements=["streamvln-pipeline", "torch==2.13.0"],
        )
    return info


def checkpoint_path(downloaded_model_dir: str | Path) -> Path:
    """Where the weights sit inside a downloaded pyfunc model folder."""
    return Path(downloaded_model_dir) / "artifacts" / CHECKPOINT_ARTIFACT
