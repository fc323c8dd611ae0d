"""The promotion rule that guards the serving alias: only a strictly better model moves it.

* `decide(candidate, champion)` promotes only a strictly better candidate;
* `record_decision` writes both scores and the decision as model-version tags and moves the alias
  only on promote; `promote` does both from one held-out evaluation of `evaluation_targets`.

MLflow only (no Prefect): the CLI, the evaluation worker and the flow's tasks all call this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from streamvln_model.registry.models import model_aliases, version_uri

TAG_PREFIX = "promotion."
# MLflow caps a model-version tag value (5000 characters in the tracking store).
TAG_VALUE_LIMIT = 5000


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def champion(client: mlflow.MlflowClient, name: str, alias: str = "champion"):
    """The ModelVersion holding `alias`, or None when no version holds it (or no such model)."""
    aliases = model_aliases(client, name) or {}
    return client.get_model_version(name, aliases[alias]) if alias in aliases else None


def _metric(scores: dict, metric: str, whose: str) -> float:
    if metric not in scores or not isinstance(scores[metric], int | float):
        available = ", ".join(k for k, v in scores.items() if isinstance(v, int | float))
        raise ValueError(f"the {whose} scores have no metric {metric!r} (available: {available})")
    return float(scores[metric])


def decide(
    candidate_scores: dict,
    champion_scores: dict | None,
    metric: str = "exact_turn_match",
    tie_break: str = "action_accuracy",
) -> Decision:
    """Promote only a strictly better candidate: higher `metric`, or equal and higher `tie_break`.

    Both are scored on the same held-out episodes, so equal counts give equal floats; a tie on
    both keeps the champion (a new version must earn the alias).
    """
    new = _metric(candidate_scores, metric, "candidate")
    if champion_scores is None:
        return Decision(True, f"no champion yet; candidate {metric} {new:.4f}")
    old = _metric(champion_scores, metric, "champion")
    if new != old:
        relation = ">" if new > old else "<"
        return Decision(new > old, f"{metric} {new:.4f} {relation} champion's {old:.4f}")
    new_tie, old_tie = (
        _metric(candidate_scores, tie_break, "candidate"),
        _metric(champion_scores, tie_break, "champion"),
    )
    if new_tie != old_tie:
        relation = ">" if new_tie > old_tie else "<"
        return Decision(
            new_tie > old_tie,
            f"{metric} tied at {new:.4f}; {tie_break} {new_tie:.4f} {relation} champion's {old_tie:.4f}",
        )
    return Decision(False, f"tied with the champion on {metric} ({new:.4f}) and {tie_break} ({new_tie:.4f})")


def _scalar_tags(prefix: str, scores: dict | None) -> dict[str, str]:
    """`prefix.<metric>` for every number in the scores (per-action ones as `per_action.<NAME>`)."""
    tags = {}
    for key, value in (scores or {}).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            tags[f"{prefix}.{key}"] = repr(value)
        elif isinstance(value, dict):
            for name, sub in value.items():
                inner = sub.get("accuracy") if isinstance(sub, dict) else sub
                if isinstance(inner, int | float):
                    tags[f"{prefix}.{key}.{name}"] = repr(inner)
    return tags


def decision_tags(
    decision: Decision,
    candidate_scores: dict,
    champion_scores: dict | None,
    champion_version: str | None,
    alias: str,
    heldout: dict | None = None,
) -> dict[str, str]:
    """What a person reading the registry needs to see why the alias did or did not move."""
    tags = {
        f"{TAG_PREFIX}decision": "promoted" if decision.promote else "rejected",
        f"{TAG_PREFIX}reason": decision.reason,
        f"{TAG_PREFIX}alias": alias,
        f"{TAG_PREFIX}compared_with": str(champion_version) if champion_version else "none",
        f"{TAG_PREFIX}candidate_scores": json.dumps(candidate_scores, sort_keys=True)[:TAG_VALUE_LIMIT],
        f"{TAG_PREFIX}champion_scores": json.dumps(champion_scores, sort_keys=True)[:TAG_VALUE_LIMIT],
    }
    tags |= _scalar_tags(f"{TAG_PREFIX}candidate", candidate_scores)
    tags |= _scalar_tags(f"{TAG_PREFIX}champion", champion_scores)
    if heldout:
        tags[f"{TAG_PREFIX}heldout"] = json.dumps(heldout, sort_keys=True)[:TAG_VALUE_LIMIT]
    return tags


def record_decision(
    client: mlflow.MlflowClient,
    name: str,
    version: str | int,
    decision: Decision,
    candidate_scores: dict,
    champion_scores: dict | None,
    champion_version: str | int | None,
    alias: str = "champion",
    heldout: dict | None = None,
) -> dict[str, str]:
    """Tag the candidate version with both scores and the decision; move `alias` only on promote."""
    tags = decision_tags(
        decision,
        candidate_scores,
        champion_scores,
        str(champion_version) if champion_version else None,
        alias,
        heldout,
    )
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    if decision.promote:
        client.set_registered_model_alias(name, alias, str(version))
    return tags


def training_folders(client: mlflow.MlflowClient, name: str, version: str | int) -> list[str]:
    """The `--video_folder` the version was trained on, as its MLflow run recorded it (else [])."""
    run_id = client.get_model_version(name, str(version)).run_id
    if not run_id:
        return []
    try:
        params = client.get_run(run_id).data.params
    except MlflowException:
        return []
    value = params.get("data.video_folder") or params.get("video_folder") or ""
    return [item.strip() for item in value.split(",") if item.strip() and item.strip() != "None"]


def evaluation_targets(
    client: mlflow.MlflowClient, name: str, candidate_version: str | int, alias: str
) -> list[str]:
    """The models one promotion evaluates together: the candidate and the current champion."""
    targets = [version_uri(name, candidate_version)]
    current = champion(client, name, alias)
    if current is not None and str(current.version) != str(candidate_version):
        targets.append(version_uri(name, current.version))
    return targets


def promote(
    client: mlflow.MlflowClient,
    name: str,
    candidate_version: str | int,
    scores: dict,
    alias: str = "champion",
    metric: str = "exact_turn_match",
    tie_break: str = "action_accuracy",
) -> dict:
    """Decide on `scores` (an evaluation of `evaluation_targets`), record it, move the alias.

    The champion is read again here: if the alias moved since the evaluation, its holder was not
    scored and nothing is decided (evaluate again).
    """
    candidate_version = str(candidate_version)
    current = champion(client, name, alias)
    champion_version = str(current.version) if current is not None else None
    result = {"model_name": name, "candidate_version": candidate_version, "alias": alias}
    if champion_version == candidate_version:
        return result | {"promoted": False, "reason": f"version {candidate_version} already holds {alias!r}"}
    models = scores.get("models", {})
    candidate_scores = models.get(version_uri(name, candidate_version))
    champion_scores = models.get(version_uri(name, champion_version)) if champion_version else None
    if candidate_scores is None or (champion_version and champion_scores is None):
        missing = version_uri(name, candidate_version if candidate_scores is None else champion_version)
        raise ValueError(
            f"the evaluation has no scores for {missing} (it scored {', '.join(models) or 'nothing'}); "
            f"the champion is version {champion_version}. Fix: evaluate the candidate and the current "
            "champion together (evaluation_targets)"
        )
    decision = decide(candidate_scores, champion_scores, metric, tie_break)
    record_decision(
        client,
        name,
        candidate_version,
        decision,
        candidate_scores,
        champion_scores,
        champion_version,
        alias,
        heldout=scores.get("heldout"),
    )
    return result | {
        "promoted": decision.promote,
        "reason": decision.reason,
        "champion_version": champion_version,
        "metric": metric,
        "candidate": candidate_scores,
        "champion": champion_scores,
        "heldout": scores.get("heldout"),
    }
