"""YAML presets (configs/*.yaml): sections request / launch / registry = the flow's parameters."""

from __future__ import annotations

from pathlib import Path

import yaml

SECTIONS = ("request", "launch", "registry")


def preset_parameters(config: str | Path | None) -> dict:
    if not config:
        return {}
    sections = yaml.safe_load(Path(config).read_text()) or {}
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{config}: unknown section(s) {sorted(unknown)}; use {', '.join(SECTIONS)}")
    return dict(sections)
