"""Run folder stage: where this flow run trains, held by this flow run alone.

A new run gets `<output root>/<flow run name>`; `resume_from` names an existing one. The folder
is locked for the flow run's lifetime (see streamvln_model/run_folder.py). A previous flow run
that trained into the folder and died without a word (SIGKILL, a lost node: its run.json still
says "running" while nobody holds the lock) is closed here: its Prefect flow run is set Crashed
and its MLflow run KILLED; this run then reopens that MLflow run and continues it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Crashed

from streamvln_model.training.run_folder import (
    FolderLock,
    RunRecord,
    find_folder,
    new_folder,
    read_record,
    write_record,
)
from tasks.caching import stage_logger


@dataclass
class ClaimedFolder:
    """The run folder, its lock (held until `release`) and its record."""

    path: Path
    lock: FolderLock
    record: RunRecord
    resumed: bool

    def save(self) -> None:
        write_record(self.path, self.record)

    def release(self) -> None:
        self.lock.release()


def claim_run_folder(output_root: str, resume_from: str | None) -> ClaimedFolder:
    """Pick (or create) the folder and take its lock; fails at once if another run holds it."""
    flow_run_id, flow_run_name = str(flow_run.get_id() or ""), str(flow_run.get_name() or "run")
    root = Path(output_root).expanduser().resolve()
    if resume_from:
        folder = find_folder(root, resume_from)
    else:
        folder = new_folder(root, flow_run_name, flow_run_id[:8] or str(int(time.time())))
    holder = {"flow_run_id": flow_run_id, "flow_run_name": flow_run_name}
    lock = FolderLock(folder, holder).acquire()
    previous = read_record(folder)
    if previous is None:
        record = RunRecord(name=folder.name, flow_run_id=flow_run_id, flow_run_name=flow_run_name)
    else:
        if previous.status == "running" and previous.flow_run_id != flow_run_id:
            close_orphan(previous)
        record = previous
        record.history.append(
            {
                "flow_run_id": previous.flow_run_id,
                "flow_run_name": previous.flow_run_name,
                "status": previous.status,
            }
        )
        record.flow_run_id, record.flow_run_name = flow_run_id, flow_run_name
        if not record.finished:
            record.status = "running"
    write_record(folder, record)
    stage_logger().info("run folder %s (%s)", folder, "resumed" if previous else "new")
    return ClaimedFolder(folder, lock, record, resumed=previous is not None)


def close_orphan(record: RunRecord) -> None:
    """The flow run that last trained here died while running: say so in Prefect and MLflow."""
    logger = stage_logger()
    message = "the process running this flow died; a later run resumed its folder"
    if record.flow_run_id:
        with get_client(sync_client=True) as client:
            try:
                state = client.read_flow_run(record.flow_run_id).state
            except ObjectNotFound:
                state = None
            if state is not None and not state.is_final():
                client.set_flow_run_state(record.flow_run_id, Crashed(message=message), force=True)
                logger.warning(
                    "flow run %s (%s) was %s: set Crashed",
                    record.flow_run_name,
                    record.flow_run_id,
                    state.name,
                )
    if record.mlflow_run_id:
        client = mlflow.MlflowClient()
        if client.get_run(record.mlflow_run_id).info.status == "RUNNING":
            client.set_terminated(record.mlflow_run_id, "KILLED")
            client.set_tag(record.mlflow_run_id, "streamvln.killed_flow_run", record.flow_run_id or "")
            logger.warning("MLflow run %s of the dead flow run: set KILLED", record.mlflow_run_id)
