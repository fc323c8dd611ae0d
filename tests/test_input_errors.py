"""Bad input is one error family (streamvln_model/config/errors.py): the CLI, the worker and the
flow exit 2 on any InputError; a refused flag is a FlagError, not a data error."""

from __future__ import annotations

import pickle

import pytest

from streamvln_model.config.arguments import resolve_argv, resolve_flags
from streamvln_model.config.errors import FlagError, InputError
from streamvln_model.config.preflight import PreflightError
from streamvln_model.config.strategies import StrategyError
from streamvln_model.data.validation.errors import DataValidationError


def test_refused_flags_are_flag_errors_not_data_errors() -> None:
    with pytest.raises(FlagError) as refused:
        resolve_flags({"no_such_flag": 1})
    assert not isinstance(refused.value, DataValidationError)
    assert str(refused.value).startswith("1 flag problem(s):") and "'no_such_flag'" in str(refused.value)
    with pytest.raises(FlagError, match="unknown argument"):
        resolve_argv(["--no_such_flag", "1"])
    with pytest.raises(FlagError, match="arguments: "):
        resolve_flags({"lr_scheduler_type": "no_such_schedule"})


def test_every_kind_is_an_input_error_and_survives_pickling() -> None:
    for kind in (FlagError, DataValidationError, PreflightError, StrategyError):
        assert issubclass(kind, InputError) and issubclass(kind, ValueError)  # the CLI's exit 2
    data = pickle.loads(pickle.dumps(DataValidationError(["bad frame"], report={"samples": 3})))
    assert (type(data), data.problems, data.report) == (DataValidationError, ["bad frame"], {"samples": 3})
    assert str(data).startswith("1 data problem(s):")
    flag = pickle.loads(pickle.dumps(FlagError(["--x: no"])))
    assert (type(flag), flag.problems) == (FlagError, ["--x: no"])
    assert str(PreflightError(["a", "b"])).startswith("2 problem(s) before launch:")
