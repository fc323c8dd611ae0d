"""Bad input, found before any expensive work starts: what the CLI and the worker exit 2 on.

`InputError` is the base: every message names the flag, file or field and the fix. Its kinds:

* `FlagError`: a flag, flag value or flag combination is refused (unknown flag, a value the
  parser cannot read, a config file a flag names that cannot be read);
* `data.validation.errors.DataValidationError`: the data or the data settings are refused;
* `preflight.PreflightError`: everything a launch found before it started, flags and data alike.

`except InputError` catches them all; `except DataValidationError` only data problems.
"""

from __future__ import annotations

SHOWN = 20  # problems in the message; `problems` keeps every one


class InputError(ValueError):
    """Bad input; `problems` lists every reason (strings, or objects whose str() is the message)."""

    kind = "input"

    def __init__(self, problems: list):
        self.problems = list(problems)
        shown = [str(p) for p in self.problems[:SHOWN]]
        more = (
            f"\n  ... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        )
        super().__init__(f"{len(self.problems)} {self.kind} problem(s):\n  " + "\n  ".join(shown) + more)

    def __reduce__(self):
        # Rebuilt from its problems, not its message, when Prefect persists or ships the error.
        return (type(self), (self.problems,))


class FlagError(InputError):
    """A flag (or the config file a flag names) is refused."""

    kind = "flag"
