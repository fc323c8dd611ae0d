"""Cache policies for planning tasks: inputs + task source + library source + files read.

`Inputs() + TaskSource()` alone would serve a stale plan after someone edits an annotations
file in place (`FilesRead` adds a fingerprint of the files a task reads), or after an upgrade
changes how the library builds a plan (`LibrarySource` adds the library's own source).

Cached results are data, never code. The result storage may be shared between machines, and
Prefect decodes a stored record with the serializer the record itself names: a file saying
"pickle" is unpickled (already when Prefect only checks whether a cache entry exists), one saying
"json" may name any callable as its decoder, and Prefect's JSON decoder instantiates any class
named in a `__class__` key. So planning results are written by `StageResultSerializer` (JSON,
decoding only to the models of `tasks.types.RESULT_TYPES`), and looked up through
`StageResultKeys`, which hands Prefect an entry only if it names that serializer and its result
validates; anything else is a cache miss, and the stage computes and overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from prefect import get_run_logger, task
from prefect._internal.compatibility.blocks import (
    call_explicitly_async_block_method,
    call_explicitly_sync_block_method,
)
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.filesystems import WritableFileSystem
from prefect.results import aget_default_result_storage, get_default_result_storage, get_result_store
from prefect.serializers import Serializer
from pydantic import Field

import streamvln_model
from streamvln_model.fingerprint import fingerprint
from tasks.types import RESULT_TYPES, StageResult


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """The task run's logger (the message shows in the flow run's logs), else this module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


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


class UntrustedResult(ValueError):
    """A stored plan that is not what `StageResultSerializer` and `StageResultKeys` write."""


class StageFailure(RuntimeError):
    """A failed stage's exception as read back from storage: its type name and message only."""


class StageResultSerializer(Serializer):
    """JSON without hooks or settings, decoding only to the models of `RESULT_TYPES`.

    Prefect's "json" serializer would write the same text, but what it reads back is driven by
    the file: its `jsonlib`/`object_decoder` settings name any importable callable and its
    decoder builds any class named in a `__class__` key. This one has no settings a file could
    set (`extra="forbid"`), and the payload names a model by its key in `RESULT_TYPES`.
    """

    type: str = Field(default="streamvln-stage-result", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, BaseException):  # a failed stage: Prefect stores its exception
            payload = {"error": f"{type(obj).__module__}.{type(obj).__qualname__}", "message": str(obj)}
        elif isinstance(obj, StageResult) and RESULT_TYPES.get(type(obj).__name__) is type(obj):
            payload = {"type": type(obj).__name__, "data": obj.model_dump(mode="json")}
        else:
            raise TypeError(f"{type(obj).__qualname__} is not a stage result (tasks.types.RESULT_TYPES)")
        return json.dumps(payload).encode()

    def loads(self, blob: bytes) -> StageResult | StageFailure:
        payload = json.loads(blob)
        if isinstance(payload, dict) and set(payload) == {"error", "message"}:
            return StageFailure(f"{payload['error']}: {payload['message']}")
        if not (isinstance(payload, dict) and set(payload) == {"type", "data"}):
            raise UntrustedResult("a stage result is {'type': <model name>, 'data': <fields>}")
        model = RESULT_TYPES.get(payload["type"]) if isinstance(payload["type"], str) else None
        if model is None:
            raise UntrustedResult(f"{payload['type']!r} is not a stage result type")
        return model.model_validate(payload["data"])


STAGE_RESULT_SERIALIZER = StageResultSerializer()
KEY_FOLDER = "streamvln-plan-keys"


def checked_metadata(key: str, metadata: bytes, result: bytes, expected: type = StageResult) -> bytes:
    """The cache entry `key` as Prefect may read it, if both of its files hold what we write.

    `metadata` must name `StageResultSerializer` and `result` must decode with it to an
    `expected` plan (not a stored failure, not another stage's plan); both are parsed with the
    plain `json` module, so checking runs nothing a file names. What Prefect gets is metadata
    built here, not the file's: it names our serializer and points at the result at `key` in
    this machine's storage, whatever path the writing machine recorded.
    """
    try:
        stored = json.loads(metadata)
        if stored["serializer"] != {"type": STAGE_RESULT_SERIALIZER.type}:
            raise UntrustedResult(f"written with serializer {stored['serializer']!r}")
        expiration = stored.get("expiration")
        if not isinstance(expiration, str | None):
            raise UntrustedResult(f"expiration {expiration!r} is not a date")
        plan = STAGE_RESULT_SERIALIZER.loads(result)
        if not isinstance(plan, expected):
            raise UntrustedResult(f"holds a {type(plan).__name__}, the stage returns a {expected.__name__}")
    except (ValueError, KeyError, TypeError) as err:  # JSON, shape and pydantic errors alike
        stage_logger().warning("ignoring the cached plan %s (computing it again): %s", key, err)
        raise UntrustedResult(f"cached plan {key}: {err}") from err
    checked = {
        "storage_key": key,
        "expiration": expiration,
        "serializer": {"type": STAGE_RESULT_SERIALIZER.type},
    }
    return json.dumps(checked).encode()


def _stage_result_type() -> type:
    """The running stage's declared return type (a `StageResult` model), else `StageResult`."""
    context = TaskRunContext.get()
    try:
        declared = get_type_hints(context.task.fn).get("return") if context else None
    except (NameError, TypeError):  # an annotation that does not resolve: check the base only
        declared = None
    return declared if isinstance(declared, type) and issubclass(declared, StageResult) else StageResult


def _result_storage() -> WritableFileSystem:
    """Where the running task's results go (Prefect reads the result from there, too)."""
    return get_result_store().result_storage or get_default_result_storage(_sync=True)


async def _aresult_storage() -> WritableFileSystem:
    return get_result_store().result_storage or await aget_default_result_storage()


class StageResultKeys(WritableFileSystem):
    """Key storage of the planning tasks: cache entries are checked before Prefect reads them.

    Prefect decodes a cached result with the serializer its record names, and without a key
    storage it decodes it already to check that the entry exists. With this key storage Prefect
    keeps the metadata apart (under KEY_FOLDER in the result storage, so PREFECT_RESULTS_*
    settings keep deciding where everything goes), asks `read_path` for it and only then reads
    the result with the serializer named there. `read_path` hands out only `checked_metadata`;
    for a refused entry it raises, which Prefect's existence check takes for a cache miss: the
    stage computes its plan again and overwrites both files.

    Prefect calls the methods as `read_path(key, _sync=True)` or `aread_path(key)`.
    """

    _block_type_name: ClassVar[str] = "StreamVLN Plan Keys"

    def read_path(self, path: str, _sync: bool = True) -> bytes:  # type: ignore[override]
        storage = _result_storage()
        metadata = call_explicitly_sync_block_method(storage, "read_path", (f"{KEY_FOLDER}/{path}",), {})
        result = call_explicitly_sync_block_method(storage, "read_path", (path,), {})
        return checked_metadata(path, metadata, result, _stage_result_type())

    async def aread_path(self, path: str) -> bytes:
        storage = await _aresult_storage()
        metadata = await call_explicitly_async_block_method(
            storage, "read_path", (f"{KEY_FOLDER}/{path}",), {}
        )
        result = await call_explicitly_async_block_method(storage, "read_path", (path,), {})
        return checked_metadata(path, metadata, result, _stage_result_type())

    def write_path(self, path: str, content: bytes, _sync: bool = True) -> Any:  # type: ignore[override]
        return call_explicitly_sync_block_method(
            _result_storage(), "write_path", (f"{KEY_FOLDER}/{path}",), {"content": content}
        )

    async def awrite_path(self, path: str, content: bytes) -> Any:
        return await call_explicitly_async_block_method(
            await _aresult_storage(), "write_path", (f"{KEY_FOLDER}/{path}",), {"content": content}
        )


def planning_policy(paths_of: Callable[[dict[str, Any]], list[str]] | None = None) -> CachePolicy:
    policy = INPUTS + TASK_SOURCE + LibrarySource()
    policy = policy + FilesRead(paths_of=paths_of) if paths_of else policy
    return policy.configure(key_storage=StageResultKeys())


def planning_task(name: str, reads: Callable[[dict[str, Any]], list[str]] | None = None):
    """Decorator for a planning stage: persisted result, cached on inputs, source and files read.

    The result is stored as JSON data (`StageResultSerializer`) and served from the cache only
    after `StageResultKeys` checked it.
    """
    return task(
        name=name,
        cache_policy=planning_policy(reads),
        persist_result=True,
        cache_expiration=PLAN_CACHE_EXPIRATION,
        result_serializer=STAGE_RESULT_SERIALIZER,
    )


def side_effect_task(name: str, **options: Any):
    """Decorator for a stage that acts on the world (trains, opens an MLflow run, registers).

    Such a stage must run each time it is called, so nothing is cached and nothing persisted:
    with PREFECT_RESULTS_PERSIST_BY_DEFAULT=true, Prefect would otherwise pickle its result and
    look it up again under a key that ignores what the stage did.
    """
    return task(name=name, cache_policy=NO_CACHE, persist_result=False, **options)
