"""Cache policies for planning tasks: task inputs + task source + the content of files read.

`Inputs() + TaskSource()` alone would serve a stale plan after someone edits an annotations
file in place; `FilesRead` adds a fingerprint of the files a task reads to the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

from streamvln_model.fingerprint import fingerprint

PLAN_CACHE_EXPIRATION = timedelta(days=30)


@dataclass
class FilesRead(CachePolicy):
    """Key on the fingerprint of the paths `paths_of(inputs)` returns."""

    paths_of: Callable[[dict[str, Any]], list[str]] = field(default=lambda inputs: [])

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters, **kwargs) -> str:
        return fingerprint(self.paths_of(inputs))


def planning_policy(paths_of: Callable[[dict[str, Any]], list[str]] | None = None) -> CachePolicy:
    policy = INPUTS + TASK_SOURCE
    return policy + FilesRead(paths_of=paths_of) if paths_of else policy
