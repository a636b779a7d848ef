"""How many marks convict a copy, and the marking rate that gives a caller that many.

The question is asked of the verdict's own test (`stats.copy_test`), on a *perfect copy*:
a model that repeats every mark it was trained on (`retention` of them) and, elsewhere,
disagrees with ours as often as independently trained models do (`disagreement`, measured
by `modelfence watermark plan` or assumed). Holding `m` marks and `control_ratio * m`
controls, such a copy reaches some log2 p; `marks_needed` is the least `m` reaching the
target. `planned_fraction` is then the least share `f` of answers such that anyone holding
`holding` answers holds at least that many marks with 95% probability
(P[Binomial(holding, f) >= m] >= 0.95), capped at `max_fraction`.

Beyond `holding` answers a caller holds enough marks, and (under `repeats: truthful`) the
rate falls to `beyond_holding` of the planned one: what a holder of n answers holds is then
the sum of two binomials, and a heavy honest user's cost falls with its volume.

Marks are answered wrongly: an honest caller loses about ``f * (accuracy - (1 - accuracy)
/ (k - 1))`` of top-1 accuracy (a decoy is right only when the model was wrong and the draw
lands on the true class), at most ``f``.

A plan file (JSON, written by `watermark plan --write`) carries each model's class count
and measured disagreement to the gateway, which plans its rate from it at start.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from .settings import WatermarkSettings

HOLD_CONFIDENCE = 0.95
VOLUMES = (1000, 2000, 5000)
PLAN_VERSION = 1
_MAX_MARKS = 1_000_000


def perfect_copy_log2_p(marks: int, n_classes: int, disagreement: float,
                        control_ratio: float, retention: float = 1.0) -> float:
    """log2 p of `stats.copy_test` for a copy holding `marks` marks (expected counts)."""
    from .stats import copy_test

    if marks <= 0:
        return 0.0
    controls = round(control_ratio * marks)
    kept = round(retention * marks)
    mark_disagree = kept + round((marks - kept) * disagreement)
    decoy_hits = mark_disagree if n_classes == 2 else kept
    control_disagree = round(controls * disagreement)
    return float(copy_test(marks, mark_disagree, decoy_hits, controls, control_disagree,
                           n_classes).log2_p)


@lru_cache(maxsize=256)
def marks_needed(n_classes: int, disagreement: float, target_log2_p: float,
                 control_ratio: float, retention: float = 1.0) -> int:
    """The fewest marks with which a perfect copy reaches `target_log2_p`."""
    if n_classes < 2:
        raise ConfigurationError(f"a watermark needs at least 2 classes, not {n_classes}")
    if not 0.0 < disagreement < 1.0 or not 0.0 < retention <= 1.0:
        raise ConfigurationError("disagreement must be in (0, 1) and retention in (0, 1]")

    def reaches(m: int) -> bool:
        return perfect_copy_log2_p(m, n_classes, disagreement, control_ratio,
                                   retention) <= target_log2_p

    hi = 1
    while not reaches(hi):
        hi *= 2
        if hi > _MAX_MARKS:
            raise ConfigurationError(
                f"no number of marks reaches 2^{target_log2_p:g} with {n_classes} classes, "
                f"disagreement {disagreement:g} and retention {retention:g}")
    lo = hi // 2  # reaches(lo) is False (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    while hi > 1 and reaches(hi - 1):  # rounding can make the curve step back by one
        hi -= 1
    return hi


def _binom_pmf(j: int, n: int, p: float) -> float:
    return math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                    + j * math.log(p) + (n - j) * math.log1p(-p))


def hold_probability(marks: int, holding: int, fraction: float) -> float:
    """P[Binomial(holding, fraction) >= marks]: that `holding` answers hold `marks` marks.

    Summed over the few terms below `marks` (no scipy: the guard plans in a request).
    """
    if marks <= 0:
        return 1.0
    if marks > holding or fraction <= 0.0:
        return 0.0
    if fraction >= 1.0:
        return 1.0
    below = math.fsum(_binom_pmf(j, holding, fraction) for j in range(marks))
    return min(1.0, max(0.0, 1.0 - below))


def marks_held(holding: int, fraction: float, confidence: float = HOLD_CONFIDENCE) -> int:
    """The most marks that `holding` answers hold with probability >= `confidence`."""
    if fraction <= 0.0:
        return 0
    if fraction >= 1.0:
        return holding
    below, j = 0.0, 0
    while j < holding:  # P[X >= j + 1] = 1 - P[X <= j]
        below += _binom_pmf(j, holding, fraction)
        if 1.0 - below < confidence:
            return j
        j += 1
    return holding


@dataclass(frozen=True, slots=True)
class Rate:
    fraction: float  # the share used
    wanted: float  # the share the target needs (> fraction when capped; inf: unreachable)
    capped: bool


def planned_fraction(marks: int, holding: int, max_fraction: float,
                     confidence: float = HOLD_CONFIDENCE) -> Rate:
    """The least share giving `marks` marks in `holding` answers with `confidence`."""
    if marks > holding:
        return Rate(max_fraction, math.inf, True)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if hold_probability(marks, holding, mid) >= confidence else (mid,
                                                                                        hi)
    return Rate(min(hi, max_fraction), hi, hi > max_fraction)


def honest_cost(fraction: float, n_classes: int, accuracy: float | None = None) -> float:
    """Points of top-1 accuracy an honest caller loses; without `accuracy`, the most."""
    if accuracy is None:
        return 100.0 * fraction
    return 100.0 * fraction * (accuracy - (1.0 - accuracy) / (n_classes - 1))


def _pmf(n: int, p: float, upto: int) -> list[float]:
    return [_binom_pmf(j, n, p) if 0.0 < p < 1.0 else float(j == round(n * p))
            for j in range(min(n, upto) + 1)]


def marks_held_tapered(answers: int, holding: int, fraction: float, later: float,
                       confidence: float = HOLD_CONFIDENCE) -> int:
    """As `marks_held`, for `answers` answers marked at `fraction` for the first `holding`
    and at `later` after: the 95%-held count of a sum of two binomials (convolved)."""
    if answers <= holding or later == fraction:
        return marks_held(answers, fraction, confidence)
    first, rest = holding, answers - holding
    top = int(first * fraction + rest * later + 12.0 * math.sqrt(answers * fraction) + 12)
    a, b = _pmf(first, fraction, top), _pmf(rest, later, top)
    cdf = 0.0
    for j in range(top + 1):  # P[X >= j + 1] = 1 - P[X <= j]
        cdf += math.fsum(a[i] * b[j - i] for i in range(max(0, j - len(b) + 1),
                                                        min(j, len(a) - 1) + 1))
        if 1.0 - cdf < confidence:
            return j
    return top


@dataclass(frozen=True, slots=True)
class AtVolume:
    """What a perfect copy of `answers` answers holds and reaches, the rate in force at
    that volume and what an honest caller of that many answers paid on average."""

    answers: int
    rate: float
    expected_marks: float
    held_marks: int  # held with 95% probability
    log2_p_expected: float
    log2_p_held: float
    honest_cost_points: float


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model's plan: the marks it needs and the rate that gives them."""

    model: str
    n_classes: int
    disagreement: float
    measured: bool  # measured on labelled data, or the configured assumption
    accuracy: float | None
    target_log2_p: float
    holding: int
    marks_needed: int
    fraction: float
    wanted_fraction: float
    capped: bool
    control_ratio: float
    honest_cost_points: float
    volumes: tuple[AtVolume, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["wanted_fraction"] = None if math.isinf(self.wanted_fraction) else (
            self.wanted_fraction)
        out["volumes"] = [asdict(v) for v in self.volumes]
        return out


def clamp_disagreement(d: float) -> float:
    """A measured 0 or 1 (few rows, one reference) still plans."""
    return min(max(d, 1e-3), 1.0 - 1e-3)


def model_rate(settings: WatermarkSettings, n_classes: int, disagreement: float
               ) -> tuple[int, Rate]:
    """The marks a model needs and the share of answers that gives them (fixed or auto)."""
    needed = marks_needed(n_classes, disagreement, settings.target_log2_p,
                          settings.control_ratio)
    if settings.fraction == "auto":
        return needed, planned_fraction(needed, settings.holding, settings.max_fraction)
    return needed, Rate(settings.fraction, settings.fraction, False)


def plan_model(settings: WatermarkSettings, model: str, n_classes: int, *,
               disagreement: float | None = None, measured: bool = False,
               accuracy: float | None = None,
               volumes: tuple[int, ...] = VOLUMES) -> ModelPlan:
    """The plan for one model under `settings` (its disagreement: given, or assumed)."""
    d = clamp_disagreement(settings.disagreement if disagreement is None else disagreement)
    needed, rate = model_rate(settings, n_classes, d)
    f = rate.fraction
    later = settings.tapered(f, settings.holding) if settings.fraction == "auto" else f
    rows = []
    for n in volumes:
        first = min(n, settings.holding)
        mean = first * f + (n - first) * later
        held = marks_held_tapered(n, settings.holding, f, later)
        rows.append(AtVolume(n, f if n <= settings.holding else later, mean, held,
                             perfect_copy_log2_p(math.floor(mean), n_classes, d,
                                                 settings.control_ratio),
                             perfect_copy_log2_p(held, n_classes, d, settings.control_ratio),
                             honest_cost(mean / n, n_classes, accuracy)))
    return ModelPlan(model, n_classes, d, measured, accuracy, settings.target_log2_p,
                     settings.holding, needed, f, rate.wanted, rate.capped,
                     settings.control_ratio, honest_cost(f, n_classes, accuracy), tuple(rows))


# the plan file -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """What the plan file says of one model."""

    n_classes: int
    disagreement: float
    accuracy: float | None = None
    measured: bool = True  # False: the assumption in force when the plan was written


def write_plan(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Write each model's entry (`ModelPlan.to_dict()` and more) to the plan file.

    Models already in the file and not in `entries` are kept, so models are planned one at
    a time.
    """
    models: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("version") == PLAN_VERSION and isinstance(
                old.get("models"), dict):
            models.update(old["models"])
    models.update(entries)
    doc = {"version": PLAN_VERSION, "models": models}
    try:
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot write the plan: {exc.strerror}") from None


def read_plan(path: Path) -> dict[str, Measured]:
    """Each model's class count and disagreement from a plan file; one clear error if bad."""
    what = f"watermark.plan_file {path}"
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"{what}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigurationError(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != PLAN_VERSION or not isinstance(
            doc.get("models"), dict):
        raise ConfigurationError(f"{what}: not a plan of version {PLAN_VERSION} (write one "
                                 "with `modelfence watermark plan --write`)")
    out: dict[str, Measured] = {}
    for name, entry in doc["models"].items():
        try:
            k, d = entry["n_classes"], entry["disagreement"]
            acc, measured = entry.get("accuracy"), entry.get("measured", True)
            ok = (isinstance(k, int) and not isinstance(k, bool) and k >= 2
                  and isinstance(d, int | float) and 0.0 <= d <= 1.0
                  and (acc is None or isinstance(acc, int | float))
                  and isinstance(measured, bool))
        except (TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise ConfigurationError(f"{what}: model {name!r} needs n_classes >= 2 and a "
                                     "disagreement in [0, 1]")
        out[str(name)] = Measured(k, float(d), None if acc is None else float(acc), measured)
    return out
