"""The vocabulary every data format shares: task ids, problems, and root-relative media.

Each training sample belongs to one task (the published `task_type`): navigation trajectories
(0), video QA in the LLaVA-Video-178K format (1), ScanQA/SQA3D posed-image scenes (2), MMC4
interleaved image-text (3). Every format's scanner reports what is wrong with its input as
`Problem`s (file, field, reason with the fix) instead of raising at the first one, so a user
fixes a data set in one pass, and a bounded share of bad samples can be quarantined by name
(`--max_invalid_fraction`) instead of silently replaced.

Media paths in the index are stored relative to a named root (`Root`): the flag the folder came
from (`video_folder[1]`, `qa_video_folder`, ...), never its absolute mount point, so nodes that
mount the same data elsewhere share one index.
"""

from __future__ import annotations

from dataclasses import dataclass

NAVIGATION = 0
QA = 1
SCANQA = 2
MMC4 = 3
TASK_NAMES: dict[int, str] = {NAVIGATION: "navigation", QA: "qa", SCANQA: "scanqa", MMC4: "mmc4"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (file, field) and why, with the fix.

    `sample` names the sample or episode the problem disqualifies (the unit
    `--max_invalid_fraction` may quarantine); None means the whole file or setting is unusable,
    which always fails the run.
    """

    file: str
    field: str
    reason: str
    sample: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict[str, str | None]:
        return {"file": self.file, "field": self.field, "reason": self.reason, "sample": self.sample}


@dataclass(frozen=True)
class Root:
    """A folder the index's relative paths hang off: its slot name and where it is mounted here.

    `slot` is how the arguments name it (`video_folder[0]`, `qa_video_folder`,
    `scanqa_video_folder`, `mmc4_video_folder`); `location` is a local path or an `s3://` URL.
    Only `slot` enters the index key and the rows (as the root's position in the index's root
    list), so moving the data changes `location` and nothing else.
    """

    slot: str
    location: str
