"""An empirical privacy audit: a statistical lower bound on the ε a mechanism really spends.

A mechanism M is ε-differentially private (ε, δ with δ > 0) when, for every pair of
neighbouring inputs D, D' and every set of outputs S,

    P[M(D) ∈ S] ≤ e^ε · P[M(D') ∈ S] + δ.

So any one event S, with its two rates measured on many draws, bounds ε from below:
ε ≥ log((P[M(D) ∈ S] - δ) / P[M(D') ∈ S]). The audit draws the mechanism's answers to two
neighbouring inputs many times, picks the most distinguishing event on a first set of draws,
then measures that one event's two rates on fresh draws and turns them into a bound that
holds with the stated confidence: a one-sided Clopper-Pearson interval for each rate, each
at half the error (Bonferroni), as in Jagielski et al. 2020 ("Auditing differentially private
machine learning: how private is private SGD?") and Nasr et al. 2021 ("Adversary
instantiation"). Choosing the event on draws that the bound does not use keeps the choice
from inflating it.

A correct mechanism's bound stays at or below its stated ε (at the confidence level, a
bound above ε is a 1-in-20 accident at most, and far less when the mechanism is loose); a
broken one (noise for twice the ε, or none) shows a bound above it once there are draws
enough. The bound is only a lower bound: a mechanism that passes is not proven private, only
not caught.

Draws must be independent. A mechanism that serves a repeated question from a keyed cache
(the gateway's repeats) gives the same answer to the same (caller, input) within its period,
so the samplers here ask fresh: a distinct key (principal) or input per draw, or the
mechanism's raw sampler.

Events: on labels, each class (the output names it or not); on probability vectors,
thresholds on each coordinate, on the top class, and on the projection onto the
difference of the two inputs (what a likelihood-ratio test of two shifted distributions
looks at).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
#: n draws of a mechanism's output for one fixed input: [n] labels or [n, k] vectors.
Sampler = Callable[[int], Array]
#: Default draws per side: for choosing the event, then for measuring it.
SELECT_DRAWS, DRAWS = 4_000, 20_000
#: Thresholds tried per statistic (quantiles of the pooled selection draws).
THRESHOLDS = 40


@dataclass(frozen=True)
class Neighbours:
    """A mechanism's two neighbouring inputs, as samplers of its answers to each."""

    name: str  # "dp-rr:1 on classes 0 and 1 of 10"
    first: Sampler
    second: Sampler
    #: what the inputs are, for the report
    relation: str = ""


@dataclass(frozen=True)
class Event:
    """A set of outputs: `stat(outputs) >= threshold` (or `<`, when `below`)."""

    name: str
    stat: Callable[[Array], Array]
    threshold: float
    below: bool = False
    exact: bool = False  # an indicator ("label == 3"): the name says it all

    def hits(self, outputs: Array) -> int:
        s = self.stat(outputs)
        return int(np.count_nonzero(s < self.threshold if self.below else s >= self.threshold))

    @property
    def text(self) -> str:
        if self.exact:
            return self.name if not self.below else f"not {self.name}"
        return f"{self.name} {'<' if self.below else '>='} {self.threshold:.6g}"


@dataclass(frozen=True)
class AuditResult:
    """One audit: the stated ε, the lower bound measured, and the evidence behind it."""

    mechanism: str
    relation: str
    epsilon: float  # stated
    delta: float
    epsilon_lower: float  # at `confidence`
    confidence: float
    event: str
    draws: int  # per side, for the bound
    hits_first: int  # the event's count on the first input's draws
    hits_second: int
    select_draws: int
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        """Not caught: the lower bound does not exceed the stated ε."""
        return self.epsilon_lower <= self.epsilon + 1e-12

    @property
    def rates(self) -> tuple[float, float]:
        return self.hits_first / self.draws, self.hits_second / self.draws


def clopper_pearson(hits: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds on a binomial rate: (lower, upper), each holding with
    probability at least 1 - alpha."""
    from scipy.stats import beta

    if not 0 <= hits <= n or n < 1:
        raise ValueError(f"need 0 <= hits <= n and n >= 1, got {hits} of {n}")
    lower = 0.0 if hits == 0 else float(beta.ppf(alpha, hits, n - hits + 1))
    upper = 1.0 if hits == n else float(beta.ppf(1.0 - alpha, hits + 1, n - hits))
    return lower, upper


def epsilon_bound(hits_first: int, hits_second: int, n: int, *, delta: float = 0.0,
                  confidence: float = 0.95) -> float:
    """The ε an event's counts prove at `confidence`: log((lower(P1) - δ) / upper(P2)), the
    two one-sided bounds at (1 - confidence) / 2 each; 0 when they prove nothing."""
    alpha = (1.0 - confidence) / 2.0
    low, _ = clopper_pearson(hits_first, n, alpha)
    _, high = clopper_pearson(hits_second, n, alpha)
    if low - delta <= 0.0 or high <= 0.0:
        return 0.0
    return max(0.0, math.log((low - delta) / high))


# events -----------------------------------------------------------------------------------


def label_events(classes: int) -> list[Event]:
    """On label outputs: 'the answer is class c', for every class."""
    return [Event(f"label == {c}", _indicator(c), 0.5, exact=True) for c in range(classes)]


def _indicator(c: int) -> Callable[[Array], Array]:
    def stat(outputs: Array) -> Array:
        out: Array = (np.asarray(outputs).reshape(-1) == c).astype(np.float64)
        return out

    return stat


def _column(j: int) -> Callable[[Array], Array]:
    def stat(outputs: Array) -> Array:
        out: Array = np.asarray(outputs, dtype=np.float64)[:, j]
        return out

    return stat


def _top_is(j: int) -> Callable[[Array], Array]:
    def stat(outputs: Array) -> Array:
        out: Array = (np.asarray(outputs).argmax(axis=1) == j).astype(np.float64)
        return out

    return stat


def _projection(direction: Array) -> Callable[[Array], Array]:
    def stat(outputs: Array) -> Array:
        out: Array = np.asarray(outputs, dtype=np.float64) @ direction
        return out

    return stat


def vector_statistics(first: Array, second: Array) -> list[tuple[str, Callable[[Array], Array]]]:
    """Statistics of probability-vector outputs worth thresholding for inputs `first` and
    `second` (each a [k] vector): every coordinate, the projection onto their difference,
    and 'the top class is j' for the classes either input puts first."""
    k = len(first)
    stats: list[tuple[str, Callable[[Array], Array]]] = [
        (f"p[{j}]", _column(j)) for j in range(k)]
    diff = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    if np.any(diff != 0):
        stats.append(("projection on the difference", _projection(diff)))
    for j in sorted({int(np.argmax(first)), int(np.argmax(second))}):
        stats.append((f"top == {j}", _top_is(j)))
    return stats


def threshold_events(stats: Sequence[tuple[str, Callable[[Array], Array]]], pooled: Array,
                     thresholds: int = THRESHOLDS) -> list[Event]:
    """For each statistic, events at `thresholds` quantiles of its pooled draws (and the
    extreme tails), both ways."""
    out = []
    qs = np.r_[np.linspace(0.0, 1.0, thresholds + 1)[1:-1], 0.001, 0.005, 0.995, 0.999]
    for name, stat in stats:
        values = stat(pooled)
        cuts = np.unique(np.r_[np.quantile(values, qs), np.unique(values)[:64]
                               if len(np.unique(values)) <= 64 else []])
        for t in cuts:
            out += [Event(name, stat, float(t)), Event(name, stat, float(t), below=True)]
    return out


# the audit --------------------------------------------------------------------------------


def best_event(events: Sequence[Event], first: Array, second: Array, *, delta: float,
               confidence: float) -> tuple[Event, bool, float]:
    """The event (and orientation: True when the second input's draws hit it more) with the
    largest bound on these draws."""
    n = min(len(first), len(second))
    best: tuple[Event, bool, float] | None = None
    best_key = (-1.0, 0)
    for e in events:
        a, b = e.hits(first[:n]), e.hits(second[:n])
        for swapped, (x, y) in ((False, (a, b)), (True, (b, a))):
            if x <= y:
                continue
            eps = epsilon_bound(x, y, n, delta=delta, confidence=confidence)
            # ties (a bound of 0 most often): the larger gap in counts
            if (eps, x - y) > best_key:
                best, best_key = (e, swapped, eps), (eps, x - y)
    if best is None:  # no event separates them at all: any event proves nothing
        return events[0], False, 0.0
    return best


def audit(case: Neighbours, epsilon: float, *, delta: float = 0.0,
          events: Callable[[Array, Array], Sequence[Event]],
          draws: int = DRAWS, select_draws: int = SELECT_DRAWS,
          confidence: float = 0.95) -> AuditResult:
    """Audit one mechanism on one pair of neighbouring inputs.

    `events(first, second)` lists the candidate events given the selection draws of each
    side (so thresholds can be placed where the draws are). The event is chosen on
    `select_draws` draws per side; the bound comes from `draws` fresh draws per side.
    """
    import time

    if draws < 1 or select_draws < 1:
        raise ValueError("an audit needs draws on both sides")
    started = time.perf_counter()
    s1, s2 = case.first(select_draws), case.second(select_draws)
    event, swapped, _ = best_event(events(s1, s2), s1, s2, delta=delta,
                                   confidence=confidence)
    d1, d2 = case.first(draws), case.second(draws)
    h1, h2 = event.hits(d1), event.hits(d2)
    if swapped:
        h1, h2 = h2, h1
    eps = epsilon_bound(h1, h2, draws, delta=delta, confidence=confidence)
    where = "second input" if swapped else "first input"
    return AuditResult(case.name, case.relation, epsilon, delta, eps, confidence,
                       f"{event.text} (more often on the {where})", draws, h1, h2,
                       select_draws, round(time.perf_counter() - started, 3))


def audit_labels(case: Neighbours, epsilon: float, classes: int, **kw: Any) -> AuditResult:
    """`audit` of a mechanism whose outputs are labels 0..classes-1: the events are 'the
    answer is c', for each class c."""
    def events(first: Array, second: Array) -> list[Event]:
        return label_events(classes)

    return audit(case, epsilon, events=events, **kw)


def audit_vectors(case: Neighbours, epsilon: float, first_input: Array, second_input: Array,
                  **kw: Any) -> AuditResult:
    """`audit` of a mechanism whose outputs are probability vectors."""
    stats = vector_statistics(first_input, second_input)

    def events(first: Array, second: Array) -> list[Event]:
        return threshold_events(stats, np.vstack([first, second]))

    return audit(case, epsilon, events=events, **kw)
