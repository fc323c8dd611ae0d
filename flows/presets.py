"""YAML presets (configs/*.yaml): sections request / launch / registry = the flow's parameters.

In `request`, the form's own fields stay where they are and any other published flag may be
written beside them (it goes to `extra_args`), so a preset reads like the published command
line. A key that is no flag at all is an error with the closest flag named, never ignored.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from streamvln_model.arguments import field_names, unknown_flags
from streamvln_model.data.errors import DataValidationError

SECTIONS = ("request", "launch", "registry")


def preset_parameters(config: str | Path | None) -> dict:
    """The preset's sections, with `request` normalised; raises with every problem in the file."""
    parameters, problems = load_preset(config)
    if problems:
        raise DataValidationError(problems)
    return parameters


def load_preset(config: str | Path | None) -> tuple[dict, list[str]]:
    """(parameters without the keys in error, problems): lets a caller add its own checks' problems."""
    if not config:
        return {}, []
    sections = yaml.safe_load(Path(config).read_text()) or {}  # a YAMLError names file, line, column
    if not isinstance(sections, dict):
        return {}, [f"{config}: expected sections {', '.join(SECTIONS)}"]
    problems = [
        f"{config}: unknown section {name!r}. Fix: use {', '.join(SECTIONS)}"
        for name in sections
        if name not in SECTIONS
    ]
    parameters = dict(sections)
    if "request" in sections:
        request, request_problems = normalise_request(sections["request"] or {})
        parameters["request"] = request
        problems += [f"{config}: request: {p}" for p in request_problems]
    return parameters, problems


def normalise_request(values: dict) -> tuple[dict, list[str]]:
    """Form fields stay; other published flags move to extra_args; unknown keys are problems."""
    from tasks.parameters import TrainRequest

    form = set(TrainRequest.model_fields)
    flags = field_names()
    request = {k: v for k, v in values.items() if k in form}
    extra = dict(request.pop("extra_args", None) or {})
    extra.update({k: v for k, v in values.items() if k not in form and k in flags})
    if extra:
        request["extra_args"] = extra
    return request, unknown_flags({k: v for k, v in values.items() if k not in form and k not in flags})
