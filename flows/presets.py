"""YAML presets (configs/*.yaml): the flow's parameters, in the same groups as the Prefect form.

A preset has the form's sections: `model`, `data`, `training` (the training groups of
tasks/parameters.py), `launch` and `tracking`. In a training group the form's own fields stay
where the form has them, and any other published flag may be written beside them, in the group
of the published dataclass that declares it (`vision_tower` under model, `tf32` under training):
a preset reads like the published command line, grouped as the Run form shows it. A key that is
no flag at all, or a flag in another group than its own, is an error naming the fix, never ignored.

The older flat `request:` section (every training flag in one mapping) is still read, with a
deprecation warning that says where each key goes.

`load_preset` is the one loader: `streamvln train` calls it, and so do `streamvln data check` and
`streamvln data preview` (through `command_arguments`, where the command line's flags win over
the preset's), the flows (`with_preset`, by preset name) and the tests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from streamvln_model.config.arguments import Arguments, field_names, parser, resolve_argv, unknown_flags
from streamvln_model.config.errors import FlagError
from streamvln_model.config.secrets import split_secrets
from tasks.parameters import GROUPS, LaunchConfig, TrackingConfig, TrainRequest

TRAINING_GROUPS = tuple(GROUPS)  # model, data, training: the form's training sections
SECTIONS = (*TRAINING_GROUPS, "launch", "tracking")
FLAT_SECTION = "request"  # the older dialect: every training flag in one section (deprecated)
logger = logging.getLogger("streamvln.presets")
_warned: set[str] = set()  # files already warned about (once per process each)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The flow's `preset` parameter (tasks.parameters.PresetName) -> its file.
PRESET_FILES = {
    "tiny": CONFIGS / "tiny_cpu.yaml",
    "tiny_stage_two": CONFIGS / "tiny_stage_two.yaml",
    "stage_one": CONFIGS / "stage_one.yaml",
    "stage_two": CONFIGS / "stage_two.yaml",
}


def group_of(flag: str) -> str | None:
    """The section a training flag is written in: its form group, else its published dataclass's."""
    for name, cls in GROUPS.items():
        if flag in cls.model_fields:
            return name
    return field_names().get(flag)


def grouped(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A flat request (published flag -> value) split into the form's groups, in key order."""
    groups: dict[str, dict[str, Any]] = {}
    flat = dict(request)
    flat.update(flat.pop("extra_args", None) or {})
    for key, value in flat.items():
        groups.setdefault(group_of(key) or "training", {})[key] = value
    return {name: groups[name] for name in TRAINING_GROUPS if name in groups}


def preset_parameters(config: str | Path | None) -> dict:
    """The preset's parameters (`request` flat and normalised, `launch`, `tracking`); raises with
    every problem in the file."""
    parameters, problems = load_preset(config)
    if problems:
        raise FlagError(problems)
    return parameters


def load_preset(config: str | Path | None) -> tuple[dict, list[str]]:
    """(parameters without the keys in error, problems): lets a caller add its own checks' problems.

    The parameters are `request` (the training groups merged into one TrainRequest's fields,
    other published flags in `extra_args`), `launch` and `tracking`, whichever dialect the file uses.
    """
    if not config:
        return {}, []
    sections = yaml.safe_load(Path(config).read_text()) or {}  # a YAMLError names file, line, column
    if not isinstance(sections, dict):
        return {}, [f"{config}: expected sections {', '.join(SECTIONS)}"]
    problems = [
        f"{config}: unknown section {name!r}. Fix: use {', '.join(SECTIONS)}"
        for name in sections
        if name not in (*SECTIONS, FLAT_SECTION)
    ]
    parameters = {name: sections[name] for name in ("launch", "tracking") if name in sections}
    has_groups = any(name in sections for name in TRAINING_GROUPS)
    flat, group_problems = _merge_groups(sections)
    problems += [f"{config}: {p}" for p in group_problems]
    if FLAT_SECTION in sections:
        if has_groups:
            problems.append(
                f"{config}: both a flat {FLAT_SECTION!r} section and the groups "
                f"{', '.join(TRAINING_GROUPS)}. Fix: move the keys of {FLAT_SECTION!r} into the groups"
            )
        else:
            _warn_flat(config, sections[FLAT_SECTION] or {})
        request, request_problems = normalise_request(sections[FLAT_SECTION] or {})
        parameters["request"] = request
        problems += [f"{config}: {FLAT_SECTION}: {p}" for p in request_problems]
    elif has_groups:
        parameters["request"], _ = normalise_request(flat)  # unknown keys: reported by _merge_groups
    return parameters, problems


def _merge_groups(sections: dict) -> tuple[dict[str, Any], list[str]]:
    """The training groups' keys in one mapping; a key in another group than its own is a problem."""
    flat: dict[str, Any] = {}
    problems: list[str] = []
    for name in TRAINING_GROUPS:
        values = sections.get(name) or {}
        if not isinstance(values, dict):
            problems.append(f"{name}: expected a mapping of flags, got {type(values).__name__}")
            continue
        for key, value in values.items():
            home = group_of(key)
            if home is None:
                problems += [f"{name}: {p}" for p in unknown_flags({key: value})]
            elif home != name and key != "extra_args":
                problems.append(
                    f"{name}: {key!r} belongs in the {home!r} group (as in the form). Fix: move it there"
                )
            elif key == "extra_args" and isinstance(value, dict):
                flat.setdefault("extra_args", {}).update(value)
            else:
                flat[key] = value
    return flat, problems


def _warn_flat(config: str | Path, flat: dict[str, Any]) -> None:
    """Once per file: the flat form still loads; say where each key goes (stderr when nothing logs)."""
    if str(config) in _warned:
        return
    _warned.add(str(config))
    where = "; ".join(f"{group}: {', '.join(keys)}" for group, keys in grouped(flat).items())
    logger.warning(
        "%s: warning: the flat %r section is deprecated. Fix: write its keys under the Prefect form's "
        "groups instead (%s); launch and tracking stay as they are. `python -m flows.presets %s` "
        "prints the grouped file",
        config,
        FLAT_SECTION,
        where,
        config,
    )


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


def preset_flags(config: str | Path | None) -> dict[str, Any]:
    """Published flag -> value for every training flag the preset sets (form fields and the rest)."""
    request = dict(preset_parameters(config).get("request", {}))
    extra = request.pop("extra_args", None) or {}
    return {**request, **extra}


def command_arguments(config: str | Path | None, argv: list[str]) -> Arguments:
    """The arguments of a command that takes published flags: the preset's (if any), then `argv`'s.

    A flag on the command line wins over the preset's; both count as named (`Arguments.given`).
    Secrets (hub_token) are left out: no command that checks or previews data needs them.
    """
    flags, _ = split_secrets(preset_flags(config)) if config else ({}, {})
    return resolve_argv([*flag_argv(flags), *argv])


def argv_flags(argv: list[str]) -> dict[str, Any]:
    """The flags a command line names (`--name value`), typed by the published parser; no others."""
    resolve_argv(argv)  # refuses unknown flags and values the parser cannot read
    values = vars(parser().parse_known_args(argv)[0])
    named: dict[str, Any] = {}
    for arg in argv:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            name = name[3:] if name not in values and name.startswith("no_") else name  # --no_<bool>
            named[name] = values[name]
    return named


def with_flags(request: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """A preset's request with `flags` set over it (form fields in place, the rest in extra_args)."""
    flat = {k: v for k, v in request.items() if k != "extra_args"} | (request.get("extra_args") or {})
    return normalise_request(flat | flags)[0]


def flag_argv(flags: dict[str, Any]) -> list[str]:
    """`--name value` for each flag (booleans as true/false, lists as several values)."""
    argv: list[str] = []
    for name, value in flags.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{name}", *(_text(v) for v in value)]
        else:
            argv += [f"--{name}", _text(value)]
    return argv


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


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
        raise FlagError([_problem(preset, e) for e in err.errors()]) from None
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


def _print_grouped(config: str) -> None:
    """`python -m flows.presets FILE`: the preset in the grouped form (YAML comments are not kept)."""
    sections = yaml.safe_load(Path(config).read_text()) or {}
    flat = sections.pop(FLAT_SECTION, None) or {}
    grouped_sections = {**grouped(flat), **sections}
    ordered = {name: grouped_sections[name] for name in SECTIONS if name in grouped_sections}
    print(yaml.safe_dump(ordered, sort_keys=False), end="")


if __name__ == "__main__":
    import sys

    for path in sys.argv[1:]:
        _print_grouped(path)
