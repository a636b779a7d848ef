"""The trade-off table: per defense, what a benign caller loses and what each thief steals.

Kept apart from the runner so that reading or printing a results file needs no red team.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def changes(mean: float) -> str:
    """A mean count over seeds: whole when it is whole."""
    return f"{mean:.0f}" if mean == round(mean) else f"{mean:.1f}"


@dataclass(frozen=True)
class Column:
    """One thief at one budget: ``random:labels`` at 2,000 queries."""

    attack: str
    budget: int
    title: str

    @property
    def key(self) -> str:
        return f"{self.attack}@{self.budget}"


@dataclass(frozen=True)
class Row:
    """One defense: benign cost, then mean (and spread) of fidelity over seeds per column."""

    spec: str
    description: str
    benign_accuracy: float | None  # of the shaped top-1 against the true labels
    top1_changes: float  # benign test rows whose top-1 the defense changed (mean over seeds)
    fidelity: dict[str, float]  # Column.key -> mean fidelity
    fidelity_sd: dict[str, float]


@dataclass(frozen=True)
class Tradeoff:
    data: str
    victim: str
    victim_accuracy: float | None
    rows_train: int
    rows_summary: int
    rows_pool: int
    rows_test: int
    thief: str
    seeds: tuple[int, ...]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    created: str
    machine: str
    elapsed_s: float

    def row(self, spec: str) -> Row:
        return next(r for r in self.rows if r.spec == spec)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["columns"] = [{**asdict(c), "key": c.key} for c in self.columns]
        return doc

    def markdown(self) -> str:
        """The table, with the setting it was measured in above it."""
        acc = "" if self.victim_accuracy is None else f", test accuracy {self.victim_accuracy:.3f}"
        lines = [
            f"Trade-off on {self.data}: victim {self.victim}{acc}; trained on "
            f"{self.rows_train:,} rows, summary fitted on {self.rows_summary:,} others, "
            f"thieves draw from {self.rows_pool:,} natural rows, measured on "
            f"{self.rows_test:,} test rows. Thief: {self.thief}; fidelity is agreement with "
            f"the undefended victim on the test rows, mean of {len(self.seeds)} seed(s). "
            f"{self.machine}, {self.created}, {self.elapsed_s:.0f} s.",
            "",
            "| defense | benign top-1 acc | top-1 changes | "
            + " | ".join(c.title for c in self.columns) + " |",
            "|---|---:|---:|" + "---:|" * len(self.columns),
        ]
        for r in self.rows:
            acc_cell = "—" if r.benign_accuracy is None else f"{r.benign_accuracy:.3f}"
            cells = [f"{r.fidelity[c.key]:.3f}" if c.key in r.fidelity else "—"
                     for c in self.columns]
            lines.append(f"| `{r.spec}` | {acc_cell} | {changes(r.top1_changes)} | "
                         + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
