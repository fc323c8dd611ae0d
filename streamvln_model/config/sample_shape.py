"""What one navigation sample is: its steps, its history frames and its actions per turn.

`STREAMVLN_SHAPE` is the one place the StreamVLN values are written. They come from the published
training scripts (github.com/InternRobotics/StreamVLN, `scripts/streamvln_train_slurm.sh` and its
stage-two version), which pass `--num_frames 32 --num_history 8 --num_future_steps 4`; the paper
(arXiv 2507.05240) trains with the same values. Every dataset, preview, evaluation, command-line
default and preset that needs a shape takes it from here.

The published *parser* (`streamvln/args.py`, mirrored in arguments.py) declares other defaults
(`num_history` None, `num_future_steps` 1): the scripts always override them. A command that checks,
previews or scores data fills what a run left unset from `STREAMVLN_SHAPE` with
`SampleShape.from_arguments`, never with numbers of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class SampleShape:
    """num_frames steps per sample, the num_history frames before them, num_future_steps actions a turn."""

    num_frames: int
    num_history: int
    num_future_steps: int

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def filled(self, **values: int | None) -> SampleShape:
        """This shape with the given values (a None value keeps this shape's)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_arguments(cls, data: Any, given: Collection[str] | None = None) -> SampleShape:
        """The shape a run's data arguments name (DataArguments, a dict of flags, a namespace).

        A field the run leaves unset (None) takes StreamVLN's value; with `given` (the flags the
        user named, `Arguments.given`), so does a field the user did not name: a bare command line
        then means StreamVLN's shape, not the published parser's placeholders.
        """
        get = data.get if isinstance(data, Mapping) else lambda name: getattr(data, name, None)
        values = {name: get(name) for name in cls.names()}
        if given is not None:
            values = {name: value for name, value in values.items() if name in given}
        return STREAMVLN_SHAPE.filled(**values)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.names()}


# InternRobotics/StreamVLN scripts/streamvln_train_slurm.sh (stage one and two):
# --num_frames 32 --num_history 8 --num_future_steps 4
STREAMVLN_SHAPE = SampleShape(num_frames=32, num_history=8, num_future_steps=4)
