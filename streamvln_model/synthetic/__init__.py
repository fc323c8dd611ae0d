"""Synthetic data in the published StreamVLN layouts, for tests and smoke trainings without real data."""

from streamvln_model.synthetic.trajectories import (
    ACTION_COLOURS,
    PAST_END_COLOUR,
    TrajectorySummary,
    decode_frame,
    render_frame,
    targets_from_actions,
    upcoming_targets,
    write_trajectories,
)

__all__ = [
    "ACTION_COLOURS",
    "PAST_END_COLOUR",
    "TrajectorySummary",
    "decode_frame",
    "render_frame",
    "targets_from_actions",
    "upcoming_targets",
    "write_trajectories",
]
