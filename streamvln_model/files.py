"""Writing files so that readers (and a crash) never see half of one: the one rule for it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, never a torn one; a crash leaves the old one."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes 0600; these files are read by other users too
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, payload: object, indent: int = 1) -> None:
    """`payload` as indented UTF-8 JSON, atomically (the layout of the published annotation files)."""
    write_text_atomically(path, json.dumps(payload, ensure_ascii=False, indent=indent, default=str))
