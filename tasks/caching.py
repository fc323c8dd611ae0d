"""Cache policies for planning tasks: inputs + task source + library source + files read.

`Inputs() + TaskSource()` alone would serve a stale plan after someone edits an annotations
file in place (`FilesRead` adds a fingerprint of the files a task reads), or after an upgrade
changes how the library builds a plan (`LibrarySource` adds the library's own source).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

import streamvln_model
from streamvln_model.fingerprint import fingerprint

PLAN_CACHE_EXPIRATION = timedelta(days=30)


@dataclass
class FilesRead(CachePolicy):
    """Key on the fingerprint of the paths `paths_of(inputs)` returns."""

    paths_of: Callable[[dict[str, Any]], list[str]] = field(default=lambda inputs: [])

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters, **kwargs) -> str:
        return fingerprint(self.paths_of(inputs))


@cache
def library_fingerprint() -> str:
    """Content of the library's modules, independent of where it is installed."""
    root = Path(streamvln_model.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


@dataclass
class LibrarySource(CachePolicy):
    """Key on the source of `streamvln_model`, which the stages call to build their plans."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters, **kwargs) -> str:
        return library_fingerprint()


def planning_policy(paths_of: Callable[[dict[str, Any]], list[str]] | None = None) -> CachePolicy:
    policy = INPUTS + TASK_SOURCE + LibrarySource()
    return policy + FilesRead(paths_of=paths_of) if paths_of else policy


def planning_task(name: str, reads: Callable[[dict[str, Any]], list[str]] | None = None):
    """Decorator for a planning stage: persisted result, cached on inputs, source and files read."""
    return task(
        name=name,
        cache_policy=planning_policy(reads),
        persist_result=True,
        cache_expiration=PLAN_CACHE_EXPIRATION,
    )
