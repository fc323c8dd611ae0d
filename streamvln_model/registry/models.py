"""Registered models as local folders: `models:/` URIs, a verified download cache, pull.

* `resolve_model("models:/streamvln@champion")` downloads that version once into a cache
  (`<cache_root>/models/<name>/<version>`), checks the weights against config.json, and returns
  the checkpoint folder, usable wherever a checkpoint path is (`--model_name_or_path`,
  `load_trained`, `NavigationPolicy.from_pretrained`). A local folder comes back unchanged.
* `pull(uri, dest)` downloads and verifies a version into a folder of the user's choice.

The promotion rule lives in `promotion.py`.

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

from streamvln_model.checkpoint.headers import check_saved_files
from streamvln_model.checkpoint.loading import SAVE_RECORD, read_record
from streamvln_model.model.tokenizer import cache_root
from streamvln_model.registry.pyfunc import BASE_ARTIFACT, checkpoint_path

MODELS_SCHEME = "models:/"
COMPLETE_MARKER = ".complete"  # written last into a cached download, before it is renamed into place
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
    aliases = model_aliases(client, ref.name)
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


def model_aliases(client: mlflow.MlflowClient, name: str) -> dict[str, str] | None:
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
