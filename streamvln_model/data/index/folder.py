"""The index on disk: one folder per content key, written atomically, opened memory-mapped.

```
<index>/manifest.json          key, format, root slots, rows per table
<index>/report.json            the validation report
<index>/navigation/{folders,episodes,samples}/   Arrow (datasets.save_to_disk)
<index>/qa/  <index>/scanqa/  <index>/mmc4/      Arrow, one table per co-training task
```

The folder is written beside its final name and renamed into place, so a crash never leaves a
half-written index, and a second writer of the same key (another rank or node) finds it done.
Roots are stored by slot; whoever opens the index says where each slot is mounted for them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from streamvln_model.data import locations as storage
from streamvln_model.data.formats.cotraining import FORMATS
from streamvln_model.data.index.tables import NavigationIndex, build_index
from streamvln_model.data.validation.check import INDEX_FORMAT, DataCheck, DataSettings, check_data
from streamvln_model.data.validation.errors import DataValidationError
from streamvln_model.data.validation.records import NAVIGATION, TASK_NAMES

MANIFEST = "manifest.json"
REPORT = "report.json"


def index_folder(parent: str | Path, key: str) -> str:
    """The index of content `key` under `parent` (a local folder or an s3:// prefix)."""
    return storage.join(str(parent), key[:32])


def is_complete(directory: str | Path, key: str) -> bool:
    """The index at `directory` is whole (its manifest, written last, is there) and is `key`'s."""
    try:
        return json.loads(storage.read_current(storage.join(str(directory), MANIFEST))).get("key") == key
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def write_index(check: DataCheck, directory: str | Path) -> tuple[str, bool]:
    """Write the checked data's index at `directory` unless it is there: (location, built).

    `directory` may be an s3:// prefix, so nodes that mount the data differently share one
    index: it is built in a local temporary folder and uploaded, its manifest last.
    """
    directory = str(directory)
    if is_complete(directory, check.key):
        return directory, False
    if storage.is_remote(directory):
        with tempfile.TemporaryDirectory() as temporary:
            local, _ = write_index(check, Path(temporary) / "index")
            storage.upload_folder(Path(local), directory, last=MANIFEST)
        return directory, True
    return str(_write_local(check, Path(directory))), True


def _write_local(check: DataCheck, directory: Path) -> Path:
    settings = check.settings
    partial = directory.with_name(f"{directory.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        nav, summary = build_index(
            check.navigation,
            settings.shape.num_frames,
            settings.shape.num_history,
            settings.shape.num_future_steps,
            settings.remove_init_turns,
        )
        nav.save(partial / TASK_NAMES[NAVIGATION])
        rows = {TASK_NAMES[NAVIGATION]: len(nav)}
        for task, module in FORMATS.items():
            task_rows = [
                row for source in check.cotraining if source.task == task for row in source.scan.rows
            ]
            if task_rows:
                table = datasets.Dataset.from_list(task_rows, features=module.FEATURES)
                table.save_to_disk(str(partial / TASK_NAMES[task]))
                rows[TASK_NAMES[task]] = len(table)
        manifest = {
            "key": check.key,
            "format": INDEX_FORMAT,
            "roots": [root.slot for root in check.roots],
            "samples": rows,
            "navigation": summary.to_dict(),
        }
        (partial / REPORT).write_text(json.dumps(check.report.to_dict(), indent=1))
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(partial, directory)
        except OSError:  # another writer finished first (same key, same content)
            if not is_complete(directory, check.key):
                shutil.rmtree(directory, ignore_errors=True)
                os.rename(partial, directory)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return directory


def index_exists(directory: str | Path) -> bool:
    """An index (any key) is at `directory`: its manifest, written last, is there."""
    return storage.exists(storage.join(str(directory), MANIFEST))


def read_manifest(directory: str | Path) -> dict:
    try:
        return json.loads(storage.read_current(storage.join(str(directory), MANIFEST)))
    except FileNotFoundError:
        raise DataValidationError(
            [f"{directory}: not a data index (no {MANIFEST}). Fix: let the data stage build it"]
        ) from None


@dataclass
class TrainingIndex:
    """An opened index: the navigation tables, one table per co-training task, root locations."""

    navigation: NavigationIndex
    cotraining: dict[int, datasets.Dataset] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.navigation) + sum(len(t) for t in self.cotraining.values())


def open_index(directory: str | Path, settings: DataSettings) -> TrainingIndex:
    """Memory-map the index; each root slot is located where `settings` mounts it on this host."""
    directory = storage.mirror(directory)  # an s3:// index: copied once per machine, then mapped
    manifest = read_manifest(directory)
    here = {root.slot: root.location for root in settings.roots()}
    missing = [slot for slot in manifest["roots"] if slot not in here]
    if missing:
        raise DataValidationError(
            [
                f"{directory}: the index reads {', '.join(missing)}, which these flags do not set. "
                "Fix: set them"
            ]
        )
    roots = [here[slot] for slot in manifest["roots"]]
    navigation = NavigationIndex.load(directory / TASK_NAMES[NAVIGATION], roots)
    cotraining = {
        task: datasets.load_from_disk(str(directory / TASK_NAMES[task]))
        for task in FORMATS
        if (directory / TASK_NAMES[task]).is_dir()
    }
    return TrainingIndex(navigation, cotraining, roots, manifest)


def checked_index(settings: DataSettings, cache_dir: Path, progress: bool = True) -> str:
    """Check the data and write (or reuse) its index under `cache_dir`: standalone workers' path.

    The ranks of a machine take turns under a file lock: the first decodes every file and
    writes the index, the others find both in the caches instead of decoding everything again.
    The flow's data stage does the same in two steps so it can publish the report as artifacts.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "data-check.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check = check_data(settings, check_cache=cache_dir / "media-checks.sqlite", progress=progress)
        path, _ = write_index(check, index_folder(cache_dir / "data-index", check.key))
    return path
