"""One error type for bad input, raised before any expensive work starts."""


class DataValidationError(ValueError):
    """Bad data or data settings; the message names the file, the field and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{len(problems)} data problem(s):\n  " + "\n  ".join(shown) + more)
