"""Run folders: one folder per training run, one writer per folder, and what the folder records.

A flow run trains into `<output root>/<run name>`; nothing else writes there. Resuming is
explicit: a later run names the folder (its name, its path, the flow or MLflow run id recorded in
it, or "latest") and continues its checkpoints and its MLflow run.

The folder's `run.json` records who trained into it (flow run, MLflow run), the step reached and
the model version registered from it, so a rerun of a finished run can see that there is nothing
left to do. The one-writer rule is an exclusive `flock` on `<folder>/.lock`: the kernel drops it
when the holder dies, however it dies, so a crashed run never leaves the folder stuck; the
holder's identity is written into the lock file for the error message of the run turned away.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamvln_model.files import write_json_atomically

RECORD_FILE = "run.json"
LOCK_FILE = ".lock"
LATEST = "latest"


class RunFolderError(ValueError):
    """A run folder that cannot be used: not found, or held by another run."""


@dataclass
class RunRecord:
    """What `run.json` holds. `status`: running while a flow trains into the folder, then
    finished (training reached its last step) or failed."""

    name: str
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    status: str = "running"
    created: float = field(default_factory=time.time)
    final_step: int | None = None
    registered_version: str | None = None
    model_uri: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier flow runs on this folder

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def read_record(folder: Path) -> RunRecord | None:
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    values = json.loads(path.read_text())
    known = RunRecord.__dataclass_fields__
    return RunRecord(**{k: v for k, v in values.items() if k in known})


def write_record(folder: Path, record: RunRecord) -> None:
    write_json_atomically(Path(folder) / RECORD_FILE, asdict(record), indent=2)


def run_folders(root: Path) -> list[Path]:
    """The run folders under `root` (those with a run.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / RECORD_FILE).is_file()]
    return sorted(found, key=lambda p: (read_record(p).created, p.name))


def new_folder(root: Path, name: str, unique_suffix: str) -> Path:
    """`<root>/<name>`, or `<root>/<name>-<suffix>` when a folder of that name exists already
    (run names are not unique), so a new run never lands in an existing run's folder."""
    folder = Path(root) / name
    if folder.exists():
        folder = Path(root) / f"{name}-{unique_suffix}"
    if folder.exists():
        raise RunFolderError(f"{folder} exists already. Fix: resume it with resume_from={folder.name!r}")
    return folder


def find_folder(root: Path, resume_from: str) -> Path:
    """The folder `resume_from` names: "latest", a path, a folder name under `root`, or a flow-run
    or MLflow run id recorded in a run.json under `root`."""
    root = Path(root)
    folders = run_folders(root)
    if resume_from == LATEST:
        if not folders:
            raise RunFolderError(f"resume_from='latest': {root} holds no run folder (no */{RECORD_FILE})")
        return folders[-1]
    for candidate in (Path(resume_from).expanduser(), root / resume_from):
        if (candidate / RECORD_FILE).is_file() or _has_checkpoints(candidate):
            return candidate.resolve()
    for folder in folders:
        record = read_record(folder)
        if resume_from in (record.flow_run_id, record.flow_run_name, record.mlflow_run_id):
            return folder
    known = ", ".join(p.name for p in folders[-5:]) or "none"
    raise RunFolderError(
        f"resume_from={resume_from!r}: no such run folder under {root} (recent runs: {known}). "
        "Fix: give a folder name, a path, a flow-run or MLflow run id, or 'latest'"
    )


def _has_checkpoints(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("checkpoint-*"))


class FolderLock:
    """An exclusive lock on a run folder for as long as this object is open.

    `acquire` fails at once (no waiting) with the holder's identity when another process holds
    it. The lock is an open file description: it is not inherited by subprocesses started with
    close_fds (the default), and it is released when this process exits or is killed.
    """

    def __init__(self, folder: Path, holder: dict[str, Any]):
        self.folder, self.holder = Path(folder), holder
        self._handle = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            raise RunFolderError(
                f"{self.folder} is in use by another run: {describe_holder(text)}. "
                "Fix: wait for it to finish, or start a new run (leave resume_from empty)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {**self.holder, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
            )
        )
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the description drops the flock
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe_holder(text: str) -> str:
    """The holder as a person reads it: flow run name and id, host, pid, since when."""
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return "unknown holder"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    who = holder.get("flow_run_name") or "a process"
    ident = f" (flow run {holder['flow_run_id']})" if holder.get("flow_run_id") else ""
    return f"{who}{ident} on {holder.get('host')} pid {holder.get('pid')} since {since}"
