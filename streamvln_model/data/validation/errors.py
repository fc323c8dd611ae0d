"""One error type for bad input, raised before any expensive work starts."""

from __future__ import annotations

from typing import Any


class DataValidationError(ValueError):
    """Bad data or data settings; every message names the file, the field and the fix.

    `problems` are strings or `records.Problem`s; `report` is the validation report (a dict)
    when the data check produced one, so callers can still publish it when the run fails.
    """

    def __init__(self, problems: list, report: dict[str, Any] | None = None):
        self.problems = list(problems)
        self.report = report
        shown = [str(p) for p in self.problems[:20]]
        more = (
            f"\n  ... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        )
        super().__init__(f"{len(self.problems)} data problem(s):\n  " + "\n  ".join(shown) + more)

    def __reduce__(self):
        # Rebuilt from its problems, not its message, when Prefect persists or ships the error.
        return (type(self), (self.problems, self.report))
