"""Registered models as local folders, and the promotion rule that guards the serving alias.

* `resolve_model("models:/streamvln@champion")` downloads that version once into a cache
  (`<cache_root>/models/<name>/<version>`), checks the weights against config.json, and returns
  the checkpoint folder, usable wherever a checkpoint path is (`--model_name_or_path`,
  `load_trained`, `NavigationPolicy.from_pretrained`). A local folder comes back unchanged.
* `decide(candidate, champion)` promotes only a strictly better candidate; `record_decision`
  writes both scores and the decision as model-version tags and moves the alias only on promote.

MLflow only (no Prefect): the CLI, the evaluation worker and the flow's tasks all call this.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from streamvln_model.checkpoint.loading import SAVE_RECORD, read_record
from streamvln_model.checkpoint.saving import check_saved_files
from streamvln_model.model.tokenizer import cache_root
from streamvln_model.registry.pyfunc import BASE_ARTIFACT, checkpoint_path

MODELS_SCHEME = "models:/"
COMPLETE_MARKER = ".complete"  # written last into a cached download, before it is renamed into place
TAG_PREFIX = "promotion."
# MLflow caps a model-version tag value (5000 characters in the tracking store).
TAG_VALUE_LIMIT = 5000
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class UnknownModelError(ValueError):
    """The registry has no such model, version or alias (bad input: the CLI exits 2)."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/name@alias` or `models:/name/version`: exactly one of alias, version."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return (
            f"{MODELS_SCHEME}{self.name}@{self.alias}" if self.alias else version_uri(self.name, self.version)
        )


def version_uri(name: str, version: str | int) -> str:
    return f"{MODELS_SCHEME}{name}/{version}"


def is_registry_uri(location: str | Path) -> bool:
    return str(location).startswith(MODELS_SCHEME)


def parse_model_uri(uri: str) -> ModelRef:
    match = _URI.match(uri)
    if not match:
        raise ValueError(
            f"{uri!r} is no registered-model URI. Fix: models:/<name>@<alias> "
            "(e.g. models:/streamvln@champion) or models:/<name>/<version> (e.g. models:/streamvln/3)"
        )
    return ModelRef(match["name"], match["alias"], match["version"])


def resolve_version(client: mlflow.MlflowClient, ref: ModelRef) -> str:
    """The version number an alias points at now (or the version itself, once checked to exist)."""
    aliases = _aliases(client, ref.name)
    server = mlflow.get_tracking_uri()
    if aliases is None:
        problem = f"no registered model {ref.name!r} at {server}"
    elif ref.alias:
        if ref.alias in aliases:
            return str(aliases[ref.alias])
        listed = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
        problem = f"registered model {ref.name!r} has no alias {ref.alias!r} (its aliases: {listed})"
    else:
        try:
            return str(client.get_model_version(ref.name, ref.version).version)
        except MlflowException:
            problem = f"registered model {ref.name!r} has no version {ref.version}"
    raise UnknownModelError(
        f"{ref.uri}: {problem}. Fix: check the name and alias, and that MLFLOW_TRACKING_URI "
        "names the registry's server"
    )


def _aliases(client: mlflow.MlflowClient, name: str) -> dict[str, str] | None:
    """Alias -> version of a registered model, or None when the model does not exist."""
    try:
        return dict(client.get_registered_model(name).aliases)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def default_cache_dir() -> Path:
    return cache_root() / "models"


def registry_key(tracking_uri: str | None = None) -> str:
    """A folder name for the registry server: version 3 of `streamvln` on one server is not
    version 3 on another (or on a test server started on the same port), so caches are per server."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    readable = re.sub(r"[^A-Za-z0-9.]+", "-", uri.split("://", 1)[-1]).strip("-")[:60] or "local"
    return f"{readable}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"


def resolve_model(path_or_uri: str | Path, cache_dir: str | Path | None = None) -> str:
    """A checkpoint folder for a local folder (unchanged) or a registry URI (downloaded once from
    the current tracking server: `MLFLOW_TRACKING_URI` or `mlflow.set_tracking_uri`).

    A version is immutable in the registry, so `<cache>/<server>/<name>/<version>` is filled once:
    the download goes to a temporary folder beside it, is verified, and is renamed into place
    only when complete; a later call (any process) returns the cached folder without downloading,
    and a cached `models:/<name>/<version>` needs no server at all. An alias is looked up every
    call (aliases move), and the version it names must be the one cached (its run), else the
    cached copy is replaced.
    """
    if not is_registry_uri(path_or_uri):
        folder = Path(path_or_uri)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no config.json; expected a checkpoint folder or models:/ URI")
        return str(folder)
    ref = parse_model_uri(str(path_or_uri))
    root = (Path(cache_dir) if cache_dir else default_cache_dir()) / registry_key()
    target = root / ref.name / (ref.version or "")
    if ref.version and _is_complete(target):  # no registry round trip for a cached version
        return str(checkpoint_path(target))
    client = mlflow.MlflowClient()
    version = client.get_model_version(ref.name, resolve_version(client, ref))
    target = root / ref.name / str(version.version)
    if _is_complete(target) and _cached_run(target) != version.run_id:
        shutil.rmtree(target)  # the registry was reset and reused the number: not our version
    if not _is_complete(target):
        _download(version_uri(ref.name, version.version), target, version.run_id)
    return str(checkpoint_path(target))


def _cached_run(folder: Path) -> str | None:
    try:
        return json.loads((folder / COMPLETE_MARKER).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def _download(uri: str, target: Path, run_id: str | None = None) -> None:
    """Download aside, point a partial save at its shipped base, verify, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging))
        checkpoint = checkpoint_path(staging)
        if not (checkpoint / "config.json").is_file():
            raise ValueError(f"{uri}: no StreamVLN checkpoint in this model (expected artifacts/checkpoint)")
        _point_at_shipped_base(staging)
        check_saved_files(checkpoint)
        (staging / COMPLETE_MARKER).write_text(json.dumps({"uri": uri, "run_id": run_id}) + "\n")
        staging.chmod(0o755)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _point_at_shipped_base(model_dir: Path) -> None:
    """A LoRA / projector-only save records its base's path on the training machine; the pyfunc
    ships that base beside it, so the cached copy's record names the shipped one instead."""
    base = model_dir / "artifacts" / BASE_ARTIFACT
    checkpoint = checkpoint_path(model_dir)
    if (base / "config.json").is_file() and (checkpoint / SAVE_RECORD).is_file():
        record = read_record(checkpoint) | {"base_model": str(base)}
        (checkpoint / SAVE_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def _publish(staging: Path, target: Path) -> None:
    """Rename into place; a complete folder another process published meanwhile is kept."""
    try:
        os.replace(staging, target)
    except OSError:
        if _is_complete(target):
            return
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(staging, target)
    # The published folder was the staging one; the absolute base path written into a partial
    # save's record must name the final location.
    _point_at_shipped_base(target)


def pull(uri: str, dest: str | Path) -> Path:
    """Download a registered version from the current tracking server into `dest` (the MLflow
    model folder, verified, renamed into place when complete); returns its checkpoint folder.
    `dest` must be missing or empty."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty. Fix: choose a new folder")
    ref = parse_model_uri(uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version(ref.name, resolve_version(client, ref))
    _download(version_uri(ref.name, version.version), dest, version.run_id)
    return checkpoint_path(dest)


# --- Promotion ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def champion(client: mlflow.MlflowClient, name: str, alias: str = "champion"):
    """The ModelVersion holding `alias`, or None when no version holds it (or no such model)."""
    aliases = _aliases(client, name) or {}
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
