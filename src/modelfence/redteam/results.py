"""Results of attack runs and assessments as plain data: what the CLI prints, the report
draws and the JSON file keeps. Only numbers and strings, so results load back without
modelfence objects and compare exactly across runs (timings are kept apart from metrics
for that reason, and so is what a live gateway's monitor and shaping did: the risk trail
and the answers per band depend on when the monitor took in each query)."""

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
    #: Over HTTP: the attacking principal, the rows answered per output-shaping band, and
    #: (with the admin token, on a monitored model) its risk score as (queries, risk).
    principal: str | None = field(compare=False, default=None)
    bands: dict[str, int] = field(compare=False, hash=False, default_factory=dict)
    risk_trail: tuple[tuple[int, float], ...] = field(compare=False, default=())

    @property
    def name(self) -> str:
        return self.attack if self.variant == "soft" else f"{self.attack}:labels"

    def at_budget(self, budget: int) -> BudgetPoint | None:
        """The thief at `budget`; for an attack stopped before it, the last one it had."""
        exact = [p for p in self.points if p.budget == budget]
        if exact or self.stopped is None:
            return exact[0] if exact else None
        before = [p for p in self.points if p.budget < budget]
        return before[-1] if before else None

    def risk_at(self, queries: int) -> float | None:
        """The last risk reading taken at or before `queries` answered queries."""
        seen = [r for q, r in self.risk_trail if q <= queries]
        return seen[-1] if seen else None

    @property
    def peak_risk(self) -> float | None:
        return max((r for _, r in self.risk_trail), default=None)

    def metrics(self) -> list[tuple[int, int, float, float | None]]:
        """(budget, queries, fidelity, accuracy) per budget: what must repeat for a seed."""
        return [(p.budget, p.queries, p.fidelity, p.accuracy) for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackResult:
        stop = d.get("stopped")
        return cls(**{**d, "points": tuple(BudgetPoint(**p) for p in d["points"]),
                      "stopped": Stop(**stop) if stop else None,
                      "bands": {str(k): int(v) for k, v in (d.get("bands") or {}).items()},
                      "risk_trail": tuple((int(q), float(r))
                                          for q, r in d.get("risk_trail") or ())})


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
    note: str | None = None  # e.g. why there is no risk trail


@dataclass(frozen=True)
class DefenseSummary:
    """What a defense costs callers, measured on the held-out rows."""

    spec: str
    description: str
    benign_accuracy: float | None  # argmax of the shaped answer vs the true labels
    #: argmax of the shaped answer vs the model's own decision, and the mean total-variation
    #: distance from the model's probabilities; None through a gateway, whose unshaped
    #: answers a caller cannot see
    benign_agreement: float | None
    distortion: float | None


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

    @property
    def remote(self) -> bool:
        """Run through a live gateway (its shaping, monitor and quotas acting)."""
        return self.target.startswith(("http://", "https://"))

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
        """Fidelity per seed for one cell of the matrix at one budget (a cell the gateway
        stopped before `budget` counts with the thief it had when it was stopped)."""
        points = (c.at_budget(budget) for c in self.cells
                  if c.name == attack and c.defense == defense)
        return [p.fidelity for p in points if p is not None]
