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

    def hits(self, outputs: Array, values: Array | None = None) -> int:
        """Outputs in the event; `values` (the statistic of `outputs`) when already known."""
        s = self.stat(outputs) if values is None else values
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
    first, second = first[:n], second[:n]
    seen: dict[int, tuple[Array, Array]] = {}  # statistic -> its values on both sides
    for e in events:
        if id(e.stat) not in seen:
            seen[id(e.stat)] = (e.stat(first), e.stat(second))
        v1, v2 = seen[id(e.stat)]
        a, b = e.hits(first, v1), e.hits(second, v2)
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


# the product's mechanisms ------------------------------------------------------------------

#: What `audit_all` (and bench/privacy.py --audit) audits: every mechanism over its range.
AUDITED: tuple[tuple[str, int], ...] = (
    ("dp-rr:0.5", 2), ("dp-rr:1", 2), ("dp-rr:2", 10), ("dp-rr:4", 10), ("dp-rr:8", 3),
    ("dp-bdpl:1,0.2", 3), ("dp-bdpl:4,0.5", 10),
    ("dp-laplace:0.5", 3), ("dp-laplace:1", 3), ("dp-laplace:4", 10),
    ("dp-gauss:1,1e-06", 3), ("dp-gauss:4,1e-06", 10),
)


def neighbours_of(defense: Any, classes: int) -> tuple[Array, Array, str]:
    """Two model answers the mechanism must not tell apart by more than its ε, and how they
    are related. Randomized response and the vector mechanisms: any two answers, so the
    farthest apart (certain of class 0, certain of class 1). The boundary layer: two answers
    in its zone that prefer different ones of the same two leading classes."""
    first, second = np.zeros(classes), np.zeros(classes)
    if getattr(defense, "kind", "") == "dp-bdpl":
        half = min(float(defense.margin), 1.0) / 2.0  # leads differ by `margin`: in the zone
        first[:2] = (0.5 + half / 2, 0.5 - half / 2)
        second[:2] = first[1::-1]
        return first, second, f"classes 0 and 1 lead by {half:g}, either way ({classes} classes)"
    first[0], second[1] = 1.0, 1.0
    return first, second, f"certain of class 0 / of class 1 ({classes} classes)"


def sampler(defense: Any, answer: Array) -> Sampler:
    """n fresh draws of `defense` for the model answer `answer`: one `apply` on n copies of
    it. The private defenses are stateless and draw anew on every row (the gateway's repeat
    memory, which serves a repeated question its first draw, sits in front of them and is not
    used here), so the rows are independent draws."""
    row = np.asarray(answer, dtype=np.float64)[None, :]

    def draw(n: int) -> Array:
        out: Array = defense.apply(np.repeat(row, n, axis=0), principal="audit")
        return out

    return draw


def audit_defense(defense: Any, *, classes: int = 3, epsilon: float | None = None,
                  delta: float | None = None, name: str | None = None, draws: int = DRAWS,
                  select_draws: int = SELECT_DRAWS, confidence: float = 0.95
                  ) -> AuditResult:
    """Audit a private defense on its neighbouring answers: the stated ε and δ are its own
    (`defense.cost`) unless given (a mis-wired variant is audited against the ε it claims)."""
    cost = getattr(defense, "cost", None)
    eps = epsilon if epsilon is not None else float(cost.epsilon if cost else 0.0)
    dlt = delta if delta is not None else float(cost.delta if cost else 0.0)
    first, second, relation = neighbours_of(defense, classes)
    draw1, draw2 = sampler(defense, first), sampler(defense, second)
    label_only = bool(getattr(defense, "kind", "") in ("dp-rr", "dp-bdpl", "labels"))
    if label_only:
        case = Neighbours(name or defense.spec, lambda n: draw1(n).argmax(axis=1),
                          lambda n: draw2(n).argmax(axis=1), relation)
        return audit_labels(case, eps, classes, delta=dlt, draws=draws,
                            select_draws=select_draws, confidence=confidence)
    case = Neighbours(name or defense.spec, draw1, draw2, relation)
    return audit_vectors(case, eps, first, second, delta=dlt, draws=draws,
                         select_draws=select_draws, confidence=confidence)


def audit_all(*, draws: int = DRAWS, select_draws: int = SELECT_DRAWS,
              audited: Sequence[tuple[str, int]] = AUDITED) -> list[AuditResult]:
    """Every (mechanism spec, classes) of `audited`, each against its own stated ε."""
    from ..shaping.spec import parse_defense

    return [audit_defense(parse_defense(spec), classes=k, draws=draws,
                          select_draws=select_draws) for spec, k in audited]
