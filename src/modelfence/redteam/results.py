"""Results of attack runs and assessments as plain data: what the CLI prints, the report
draws and the JSON file keeps. Only numbers and strings, so results load back without
modelfence objects and compare exactly across runs (timings are kept apart from metrics
for that reason)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class BudgetPoint:
    """The thief trained on the first `queries` answers (fewer than `budget` if stopped)."""

    budget: int
    queries: int
    fidelity: float
    accuracy: float | None
    train_s: float = field(compare=False, default=0.0)


@dataclass(frozen=True)
class Stop:
    """Why the endpoint stopped answering: HTTP status, its message, queries answered."""

    status: int
    message: str
    after: int

    def describe(self) -> str:
        return (f"the endpoint answered {self.status} after {self.after} "
                f"quer{'y' if self.after == 1 else 'ies'}: {self.message}")


@dataclass(frozen=True)
class AttackResult:
    attack: str  # kind, e.g. "random"
    variant: str  # "soft" or "labels"
    title: str
    thief: str
    defense: str
    seed: int
    points: tuple[BudgetPoint, ...]
    queries: int
    requests: int
    stopped: Stop | None = None
    collect_s: float = field(compare=False, default=0.0)
    total_s: float = field(compare=False, default=0.0)

    @property
    def name(self) -> str:
        return self.attack if self.variant == "soft" else f"{self.attack}:labels"

    def metrics(self) -> list[tuple[int, int, float, float | None]]:
        """(budget, queries, fidelity, accuracy) per budget: what must repeat for a seed."""
        return [(p.budget, p.queries, p.fidelity, p.accuracy) for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackResult:
        stop = d.get("stopped")
        return cls(**{**d, "points": tuple(BudgetPoint(**p) for p in d["points"]),
                      "stopped": Stop(**stop) if stop else None})


@dataclass(frozen=True)
class AttackRun:
    """One `run_attack`: the result and what it ran against."""

    result: AttackResult
    target: str
    pool: str
    attack_rows: int
    eval_rows: int
    eval_requests: int
    victim_accuracy: float | None
    n_classes: int
    n_features: int


@dataclass(frozen=True)
class DefenseSummary:
    """What a defense costs callers, measured on the held-out rows."""

    spec: str
    description: str
    benign_accuracy: float | None  # argmax of the shaped answer vs the true labels
    benign_agreement: float  # argmax of the shaped answer vs the model's own decision
    distortion: float  # mean total-variation distance from the model's probabilities


@dataclass(frozen=True)
class Assessment:
    target: str
    pool: str
    thief: str
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    attacks: tuple[str, ...]
    defenses: tuple[DefenseSummary, ...]
    cells: tuple[AttackResult, ...]
    n_classes: int
    n_features: int
    attack_rows: int
    eval_rows: int
    victim_accuracy: float | None
    executor: str
    created: str
    elapsed_s: float = field(compare=False, default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"modelfence_assessment": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Assessment:
        d = {k: v for k, v in d.items() if k != "modelfence_assessment"}
        return cls(**{**d, "budgets": tuple(d["budgets"]), "seeds": tuple(d["seeds"]),
                      "attacks": tuple(d["attacks"]),
                      "defenses": tuple(DefenseSummary(**x) for x in d["defenses"]),
                      "cells": tuple(AttackResult.from_dict(c) for c in d["cells"])})

    def fidelity(self, attack: str, defense: str, budget: int) -> list[float]:
        """Fidelity per seed for one cell of the matrix at one budget."""
        return [p.fidelity for c in self.cells if c.name == attack and c.defense == defense
                for p in c.points if p.budget == budget]
