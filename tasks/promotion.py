"""Guarded promotion as a flow stage: move the serving alias only to a better version.

Runs after `tasks.evaluation.evaluate_models` scored the candidate and the current champion
(`streamvln_model.registry.evaluation_targets`) on the same held-out episodes; the decision, both
scores and the reason become tags of the candidate version (streamvln_model/registry.py).
"""

from __future__ import annotations

import mlflow
from prefect import get_run_logger

from streamvln_model.registry.promotion import promote
from tasks.caching import side_effect_task


@side_effect_task("promotion")
def promote_candidate(model_name: str, candidate_version: str, scores: dict, alias: str = "champion") -> dict:
    result = promote(mlflow.MlflowClient(), model_name, candidate_version, scores, alias)
    verb = "promoted to" if result["promoted"] else "not promoted to"
    get_run_logger().info(
        "%s version %s %s %r: %s", model_name, candidate_version, verb, alias, result["reason"]
    )
    return result
