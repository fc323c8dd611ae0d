"""Synthetic data in the published StreamVLN layouts, for tests and smoke trainings without real data."""

from streamvln_model.synthetic.common import COLOURS, nearest_colour
from streamvln_model.synthetic.mixture import MixtureSummary, write_mixture
from streamvln_model.synthetic.mmc4 import MMC4Summary, write_mmc4
from streamvln_model.synthetic.scanqa import ScanQASummary, write_scanqa
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
from streamvln_model.synthetic.video_qa import VideoQASummary, write_video_qa

__all__ = [
    "ACTION_COLOURS",
    "COLOURS",
    "PAST_END_COLOUR",
    "MMC4Summary",
    "MixtureSummary",
    "ScanQASummary",
    "TrajectorySummary",
    "VideoQASummary",
    "decode_frame",
    "nearest_colour",
    "render_frame",
    "targets_from_actions",
    "upcoming_targets",
    "write_mixture",
    "write_mmc4",
    "write_scanqa",
    "write_trajectories",
    "write_video_qa",
]
