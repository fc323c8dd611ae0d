"""Stage 7, Data Module Creation: scan + validate + index the trajectories once, keyed on content.

The index lands in a content-addressed folder under the plan cache; workers memory-map it.
If a cached plan points at an index folder that was deleted since, the flow re-runs this task
with `refresh_cache=True` (see flows/train.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from streamvln_model.data.annotations import load_episodes, split_folders
from streamvln_model.data.index import build_index, save_index
from streamvln_model.fingerprint import fingerprint
from tasks.caching import planning_task
from tasks.types import DataPlan, ResolvedArguments


def _sources(arguments: ResolvedArguments) -> list[str]:
    return [str(p) for p in split_folders(arguments.data["video_folder"])]


def _sampling(arguments: ResolvedArguments) -> tuple[int, int, int]:
    data = arguments.data
    return data["num_frames"], data["num_history"], data["num_future_steps"]


def index_dir(arguments: ResolvedArguments, plan_root: str, content: str) -> Path:
    frames, history, future = _sampling(arguments)
    return Path(plan_root) / "data-index" / f"{content[:20]}-f{frames}-h{history}-k{future}"


def _data_paths(inputs: dict) -> list[str]:
    return _sources(inputs["arguments"])


def _summary_markdown(summary: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, (dict, list)))
    actions = ", ".join(f"{k}: {v}" for k, v in summary["action_counts"].items())
    return f"# Navigation data\n\n| field | value |\n|---|---|\n{rows}\n\nTarget actions: {actions}\n"


@planning_task("data-module", reads=_data_paths)
def build_data_module(arguments: ResolvedArguments, plan_root: str) -> DataPlan:
    sources = _sources(arguments)
    content = fingerprint(sources)
    episodes = load_episodes(sources)  # raises DataValidationError naming file, field and fix
    index, summary = build_index(episodes, *_sampling(arguments))
    target = index_dir(arguments, plan_root, content)
    save_index(index, target)
    (target / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    get_run_logger().info(
        "indexed %d samples from %d episodes into %s", summary.samples, summary.episodes, target
    )
    create_markdown_artifact(
        _summary_markdown(summary.to_dict()), key="navigation-data", description="Data summary"
    )
    return DataPlan(index_path=str(target), fingerprint=content, summary=summary.to_dict())
