"""The validation report: what the data holds and everything wrong with it, in one place.

Counts per source and task, samples per split, the estimated tokens per sample as a
histogram, and every problem with file, field and reason; the quarantined samples when
`--max_invalid_fraction` allowed skipping some. Shown as a Prefect table artifact, logged to
MLflow as `data/validation_report.json`, and printed by `streamvln data check`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from streamvln_model.data.validation.records import NAVIGATION, TASK_NAMES, Problem, Root

if TYPE_CHECKING:
    from streamvln_model.data.formats.annotations import NavigationScan
    from streamvln_model.data.formats.cotraining import CoTrainingSource

TOKEN_BINS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


def token_histogram(tokens: list[int]) -> dict[str, int]:
    """Estimated tokens per sample, binned by powers of two ("<=4096": count, ...)."""
    counts: Counter[str] = Counter()
    for count in tokens:
        label = next((f"<={edge}" for edge in TOKEN_BINS if count <= edge), f">{TOKEN_BINS[-1]}")
        counts[label] += 1
    order = [f"<={edge}" for edge in TOKEN_BINS] + [f">{TOKEN_BINS[-1]}"]
    return {label: counts[label] for label in order if counts[label]}


@dataclass
class ValidationReport:
    status: str
    roots: list[dict[str, str]]
    sources: list[dict[str, Any]]
    tasks: dict[str, int]
    splits: dict[str, int]
    tokens: dict[str, int]
    problems: list[dict[str, Any]]
    quarantined: list[str] = field(default_factory=list)
    key: str = ""

    @classmethod
    def build(
        cls,
        roots: list[Root],
        nav: NavigationScan,
        sources: list[CoTrainingSource],
        problems: list[Problem],
        tokens: dict[str, int],
    ) -> ValidationReport:
        per_root = Counter(nav.folders[e["folder"]]["root"] for e in nav.episodes)
        rows: list[dict[str, Any]] = [
            {"source": roots[i].location, "slot": roots[i].slot, "task": TASK_NAMES[NAVIGATION], "entries": n}
            for i, n in sorted(per_root.items())
        ]
        rows += [
            {
                "source": s.json_file,
                "slot": roots[s.root_index].slot,
                "task": TASK_NAMES[s.task],
                "entries": len(s.scan.rows),
            }
            for s in sources
        ]
        tasks: Counter[str] = Counter()
        for row in rows:
            tasks[row["task"]] += row["entries"]
        return cls(
            status="checked",
            roots=[{"slot": r.slot, "location": r.location} for r in roots],
            sources=rows,
            tasks=dict(tasks),
            splits={"train": sum(tasks.values())},
            tokens=tokens,
            problems=[p.to_dict() for p in problems],
        )

    def failed(self, problems: list[Problem]) -> ValidationReport:
        self.status = "failed"
        self.problems = [p.to_dict() for p in problems]
        return self

    def passed(self, quarantined: set[str]) -> ValidationReport:
        self.status = "passed with quarantine" if quarantined else "passed"
        self.quarantined = sorted(quarantined)
        self.splits = {"train": self.splits["train"] - len(quarantined), "quarantined": len(quarantined)}
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def problem_rows(self) -> list[dict[str, Any]]:
        """The problems as table rows (the Prefect table artifact)."""
        return [{k: p[k] or "" for k in ("file", "field", "reason", "sample")} for p in self.problems]

    def markdown(self) -> str:
        lines = [f"# Data validation: {self.status}", ""]
        if self.key:
            lines += [f"Index key: `{self.key[:20]}`", ""]
        lines += ["| source | slot | task | entries |", "|---|---|---|---|"]
        lines += [f"| {s['source']} | {s['slot']} | {s['task']} | {s['entries']} |" for s in self.sources]
        lines += ["", "| task | entries |", "|---|---|", *(f"| {k} | {v} |" for k, v in self.tasks.items())]
        lines += ["", "| split | entries |", "|---|---|", *(f"| {k} | {v} |" for k, v in self.splits.items())]
        lines += [
            "",
            "Estimated tokens per sample: "
            + (
                ", ".join(f"{k}: {v}" for k, v in self.tokens.items())
                or "not estimated (tokens per frame come from the checkpoint: give --model_name_or_path)"
            ),
        ]
        lines += ["", f"Problems: {len(self.problems)}"]
        if self.problems:
            lines += ["", "| file | field | reason | sample |", "|---|---|---|---|"]
            lines += [
                f"| {p['file']} | {p['field']} | {p['reason']} | {p['sample'] or ''} |"
                for p in self.problems[:200]
            ]
        if self.quarantined:
            lines += ["", f"Quarantined ({len(self.quarantined)}): " + ", ".join(self.quarantined[:200])]
        return "\n".join(lines) + "\n"
