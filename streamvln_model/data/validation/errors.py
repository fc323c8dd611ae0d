"""The error of bad data or data settings (a kind of config.errors.InputError: exit 2)."""

from __future__ import annotations

from typing import Any

from streamvln_model.config.errors import InputError


class DataValidationError(InputError):
    """Bad data or data settings; every message names the file, the field and the fix.

    `problems` are strings or `records.Problem`s; `report` is the validation report (a dict)
    when the data check produced one, so callers can still publish it when the run fails.
    """

    kind = "data"

    def __init__(self, problems: list, report: dict[str, Any] | None = None):
        self.report = report
        super().__init__(problems)

    def __reduce__(self):
        return (type(self), (self.problems, self.report))
