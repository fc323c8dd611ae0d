"""Frame order is step order: `7.jpg` comes before `12.jpg`, whatever the zero padding.

The published loader sorts frame names as text, so an episode whose frames are named
`0.jpg .. 13.jpg` feeds `12.jpg` at step 4. Names here must be step numbers (any padding, one
image suffix); anything else is refused with the folder named, never guessed.
"""

from __future__ import annotations

import re

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
_STEP_NAME = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def is_frame(name: str) -> bool:
    return name.lower().endswith(FRAME_SUFFIXES)


def order_frames(names: list[str]) -> tuple[list[str], str | None]:
    """The image names of a folder in step order, or a reason why they have no step order.

    Non-image files (poses, intrinsics, `.DS_Store`) are ignored. Two names for one step
    (`7.jpg` and `007.jpg`) or a name that is not a number are refused.
    """
    frames = [name for name in names if is_frame(name)]
    steps: dict[int, str] = {}
    for name in frames:
        match = _STEP_NAME.match(name)
        if match is None:
            return [], (
                f"frame file {name!r} is not named by its step number. Fix: name frames 0.jpg, 1.jpg, ... "
                "(any zero padding) so their order is the step order"
            )
        step = int(match.group(1))
        if step in steps:
            return [], f"frames {steps[step]!r} and {name!r} both claim step {step}. Fix: keep one"
        steps[step] = name
    return [steps[step] for step in sorted(steps)], None
