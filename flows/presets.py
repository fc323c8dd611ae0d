"""YAML presets (configs/*.yaml): sections request / launch / tracking = the flow's parameters.

In `request`, the form's own fields stay where they are and any other published flag may be
written beside them (it goes to `extra_args`), so a preset reads like the published command
line. A key that is no flag at all is an error with the closest flag named, never ignored.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from streamvln_model.config.arguments import field_names, unknown_flags
from streamvln_model.data.validation.errors import DataValidationError
from tasks.parameters import LaunchConfig, TrackingConfig, TrainRequest

SECTIONS = ("request", "launch", "tracking")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The flow's `preset` parameter (tasks.parameters.PresetName) -> its file.
PRESET_FILES = {
    "tiny": CONFIGS / "tiny_cpu.yaml",
    "tiny_stage_two": CONFIGS / "tiny_stage_two.yaml",
    "stage_one": CONFIGS / "stage_one.yaml",
    "stage_two": CONFIGS / "stage_two.yaml",
}


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
    form = set(TrainRequest.model_fields)
    flags = field_names()
    request = {k: v for k, v in values.items() if k in form}
    extra = dict(request.pop("extra_args", None) or {})
    extra.update({k: v for k, v in values.items() if k not in form and k in flags})
    if extra:
        request["extra_args"] = extra
    return request, unknown_flags({k: v for k, v in values.items() if k not in form and k not in flags})


def preset_file(name: str) -> Path:
    if name not in PRESET_FILES:
        raise ValueError(f"unknown preset {name!r}. Fix: use one of {', '.join(PRESET_FILES)}")
    return PRESET_FILES[name]


def with_preset(
    preset: str | None,
    groups: dict[str, BaseModel | None],
    launch: LaunchConfig | None,
    tracking: TrackingConfig | None,
) -> tuple[TrainRequest, LaunchConfig, TrackingConfig]:
    """The preset's values, overridden field by field by what the form sets.

    A training field counts as set when it is not None; a launch or tracking field when the caller
    gave it (pydantic's `model_fields_set`), so a default left alone keeps the preset's value.
    """
    base = preset_parameters(preset_file(preset)) if preset else {}
    request = dict(base.get("request", {}))
    extra = dict(request.pop("extra_args", {}) or {})
    for group in groups.values():
        if group is not None:
            fields = group.set_fields()
            extra |= fields.pop("extra_args", {}) or {}
            request |= fields
    try:
        merged = TrainRequest(**request, extra_args=extra)
    except ValidationError as err:
        raise DataValidationError([_problem(preset, e) for e in err.errors()]) from None
    return (
        merged,
        _overlay(LaunchConfig, base.get("launch"), launch),
        _overlay(TrackingConfig, base.get("tracking"), tracking),
    )


def _overlay(cls: type[BaseModel], preset_values: dict | None, given: BaseModel | None) -> BaseModel:
    values = dict(preset_values or {})
    if given is not None:
        values |= given.model_dump(include=given.model_fields_set)
    return cls(**values)


def _problem(preset: str | None, error: dict) -> str:
    where = f"preset {preset!r} + form" if preset else "form"
    return f"{where}: {error['msg']}"
