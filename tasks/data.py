"""Stage 7, Data Module Creation: check every sample once, index it under a content key.

`streamvln_model.data.catalog.check_data` reads every annotation, decodes every image and
video (resumable: a media-check cache under the plan root), and applies the invalid-data
policy; the index lands in `<plan_root>/data-index/<content key>`, which nodes mounting the
same data elsewhere share. The validation report is a Prefect table + markdown artifact (also
when the check fails) and goes to MLflow with the plan. If a cached plan points at an index
folder that was deleted since, the flow re-runs this task with `refresh_cache=True`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from streamvln_model.data import locations as storage
from streamvln_model.data.formats.mixture import read_mixture
from streamvln_model.data.index.folder import index_folder, read_manifest, write_index
from streamvln_model.data.validation.check import DataSettings, check_data
from streamvln_model.data.validation.errors import DataValidationError
from streamvln_model.data.validation.report import ValidationReport
from tasks.caching import planning_task
from tasks.types import DataPlan, ResolvedArguments, VisionPlan

REPORT_KEY = "data-validation"


def data_settings(arguments: ResolvedArguments, vision: VisionPlan | None = None) -> dict:
    """The data flags the stage reads (`DataSettings` as a dict): its only argument-derived input,
    so a new output_dir or learning rate does not re-check the data."""
    tokens = vision.tokens_per_frame if vision else None
    return asdict(DataSettings.of(arguments.data, arguments.training, tokens))


def _data_paths(inputs: dict) -> list[str]:
    """What the stage reads, for its cache key: every root, the mixture YAML and its json files."""
    settings = DataSettings(**inputs["settings"])
    paths = [root.location for root in settings.roots()]
    if settings.cotraining:
        paths.append(settings.data_path)
        try:
            text = storage.read_current(settings.data_path).decode("utf-8")
            paths += [entry.json_path for entry in read_mixture(text, settings.data_path)[0]]
        except (FileNotFoundError, ValueError):
            pass  # the stage itself reports it
    return paths


def publish_report(report: dict) -> None:
    """The report as Prefect artifacts: a markdown overview and the problems as a table."""
    view = ValidationReport(**report)
    create_markdown_artifact(view.markdown(), key=REPORT_KEY, description="Data validation report")
    if view.problems:
        create_table_artifact(view.problem_rows(), key=f"{REPORT_KEY}-problems", description="Data problems")


@planning_task("data-module", reads=_data_paths)
def build_data_module(settings: dict, plan_root: str, index_root: str | None = None) -> DataPlan:
    """Check and index the data `settings` (see `data_settings`) names; the report as artifacts.

    The index goes under `index_root` when given (an s3:// prefix shares it between nodes that
    mount the data elsewhere), else under the plan root.
    """
    logger = get_run_logger()
    settings = DataSettings(**settings)
    parent = index_root or str(Path(plan_root) / "data-index")
    try:
        check = check_data(settings, check_cache=Path(plan_root) / "media-checks.sqlite")
    except DataValidationError as err:
        if err.report:
            publish_report(err.report)
        raise
    target, built = write_index(check, index_folder(parent, check.key))
    manifest = read_manifest(target)
    logger.info(
        "%s index %s: %s",
        "built" if built else "reused",
        target,
        ", ".join(f"{k} {v}" for k, v in manifest["samples"].items()),
    )
    report = check.report.to_dict()
    publish_report(report)
    summary = {
        "sources": [root["location"] for root in report["roots"]],
        "samples": sum(manifest["samples"].values()),
        "samples_per_task": manifest["samples"],
        "navigation": manifest["navigation"],
        "report": report,
    }
    return DataPlan(index_path=str(target), fingerprint=check.key, summary=summary)
