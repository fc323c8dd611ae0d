"""Which steps a training sample covers: chunk starts, current and history frames, action turns.

Pure functions of (number of actions, settings), shared by the dataset, the data preview and the
index statistics, so all three agree on what the model sees.
"""

from __future__ import annotations

from streamvln_model.data.validation.errors import DataValidationError
from streamvln_model.model.constants import ACTION_STOP

MIN_ACTIONS = 4  # episodes with fewer entries in `actions` are skipped (published behaviour)


def validate_sampling(num_frames: int, num_history: int | None, num_future_steps: int) -> None:
    """The model splits frames by position, so exactly `num_history` history frames must exist."""
    problems = []
    if num_frames < 1:
        problems.append(f"--num_frames={num_frames}: must be >= 1")
    if num_future_steps < 1:
        problems.append(f"--num_future_steps={num_future_steps}: must be >= 1")
    if num_history is None or num_history < 1:
        problems.append(f"--num_history={num_history}: must be >= 1 (StreamVLN uses 8)")
    elif num_frames >= 1 and num_frames % num_history:
        problems.append(
            f"--num_history={num_history} does not divide --num_frames={num_frames}: samples after the first "
            f"chunk would not get exactly {num_history} history frames. Fix: choose num_history among the "
            f"divisors of num_frames (e.g. 8 with 32)"
        )
    if problems:
        raise DataValidationError(problems)


def chunk_starts(num_actions: int, num_frames: int) -> list[int]:
    """Starts 0, F, 2F, ... for n in 0..L//F, without a start equal to L."""
    return [n * num_frames for n in range(num_actions // num_frames + 1) if n * num_frames != num_actions]


def chunk_end(start: int, num_actions: int, num_frames: int) -> int:
    return min(start + num_frames, num_actions)


def current_steps(start: int, num_actions: int, num_frames: int, num_future_steps: int) -> list[int]:
    return list(range(start, chunk_end(start, num_actions, num_frames), num_future_steps))


def history_steps(start: int, num_history: int) -> list[int]:
    """Steps 0, d, 2d, ... below `start` with d = max(start // H, 1); none for the first chunk."""
    if start == 0:
        return []
    return list(range(0, start, max(start // num_history, 1)))


def target_actions(actions: list[int]) -> list[int]:
    """The action to answer at each step: drop the leading placeholder, append the final STOP."""
    return [*list(actions[1:]), ACTION_STOP]


def action_groups(actions: list[int], start: int, num_frames: int, num_future_steps: int) -> list[list[int]]:
    """The targets of steps start..end-1 cut into turns of `num_future_steps` actions."""
    targets = target_actions(actions)[start : chunk_end(start, len(actions), num_frames)]
    return [targets[i : i + num_future_steps] for i in range(0, len(targets), num_future_steps)]
