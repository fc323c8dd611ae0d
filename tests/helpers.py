"""Shared helpers for tests that run the real Prefect flow and read its task runs back."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path


def task_states(flow_run_id) -> dict[str, list[str]]:
    """Task name (the run name without its `-<suffix>`) -> state names, in start order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.created):
        states[run.name.rsplit("-", 1)[0]].append(run.state.name)
    return dict(states)


def copy_dataset(source: Path, target: Path) -> Path:
    """A private, editable copy of a (session-shared) synthetic dataset."""
    shutil.copytree(source, target)
    return target


def read_annotations(dataset: Path) -> list[dict]:
    return json.loads((dataset / "annotations.json").read_text())


def write_annotations(dataset: Path, episodes: list[dict]) -> None:
    (dataset / "annotations.json").write_text(json.dumps(episodes, indent=1))
