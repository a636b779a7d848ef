"""The statistics of ownership verification, exact in log space.

A p-value like 2^-200 is a perfectly good answer, but it underflows a float's tail
functions; every tail here is summed in log space (`math.lgamma`, log-sum-exp), so it is
exact down to any size and reported as log2 p.

**Why the tests are valid.** A recorded input is a *mark* (answered with a keyed decoy) or a
*control* (answered truthfully) by the same keyed draw u = HMAC(key, input): marks where u is
below the marking rate, controls where u is in a band at the top of [0, 1), from the same
callers' inputs. The key is secret, so under H0 ("the suspect was made without our marked
answers") the suspect's answer to an input does not depend on whether u made it a mark:
given the recorded inputs of a set and how many are marks, which ones are marks is a uniform
random subset (the draw is a pseudo-random function of the input; this holds whatever rate
was in force when each was recorded, as long as controls were kept at the same ratio to marks,
and assumes a caller's choice of inputs does not follow which of its earlier answers were marks:
a marked answer reads like any other). The suspect's disagreements with our model on marks and
controls are therefore exchangeable, and

* the **disagreement test** (`disagreement_test`) is the permutation test of that: of the T
  disagreements among the m marks and c controls, how likely at least the observed number
  fall on the marks, the hypergeometric upper tail (one-sided Fisher exact test). It is exact
  for a suspect of any accuracy (no nuisance parameter) and needs no reference models. With
  two classes a disagreement on a mark *is* a repeat of the decoy, so this is the whole test.
* the **decoy test** (`decoy_test`, k >= 3): the decoy is drawn from other bits of the same
  HMAC, uniform among the k - 1 classes other than our model's answer; where the suspect
  disagrees with our model on a mark, it names the decoy with probability exactly 1/(k - 1)
  under H0, independently, *given* which inputs it disagrees on. So its p-value is valid
  conditionally on everything the disagreement test sees, the two are independent under H0,
  and Fisher's combination (`fisher_combine`) of them is a valid p-value (`copy_test`).
* several sets tested (every principal, tenant, all records) are corrected by Bonferroni
  (`bonferroni`), which needs no assumption on how the sets overlap.

A subsample of the inputs (a query budget) keeps this when it is chosen by an order
independent of the key (the inputs' SHA-256) with sizes fixed by counts alone.

`conservative_test` (DAWN-style: the decoy hits against an upper bound of the suspect's
control disagreement rate) is kept as a cross-check for the evidence; verdicts do not use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..extras import require

LN2 = math.log(2.0)
CONTROL_CONFIDENCE = 0.999
#: JSON has no -inf; a log2 p is never reported below this.
LOG2_P_FLOOR = -1e9


def _logsumexp(terms: Sequence[float]) -> float:
    top = max(terms)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.fsum(math.exp(t - top) for t in terms))


def _lchoose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def log_binom_sf(x: int, n: int, p: float) -> float:
    """ln P[Binomial(n, p) >= x], exact (log-sum-exp of the terms)."""
    if x <= 0:
        return 0.0
    if x > n or p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [_lchoose(n, j) + j * lp + (n - j) * lq for j in range(x, n + 1)]
    return min(0.0, _logsumexp(terms))


def log_hypergeom_sf(x: int, total: int, successes: int, draws: int) -> float:
    """ln P[X >= x] for X ~ Hypergeometric(population `total`, `successes` in it, `draws`)."""
    if not (0 <= successes <= total and 0 <= draws <= total):
        raise ValueError("need 0 <= successes, draws <= total")
    lo = max(0, draws + successes - total)
    hi = min(draws, successes)
    if x <= lo:
        return 0.0
    if x > hi:
        return -math.inf
    base = _lchoose(total, draws)
    terms = [_lchoose(successes, j) + _lchoose(total - successes, draws - j) - base
             for j in range(x, hi + 1)]
    return min(0.0, _logsumexp(terms))


def clopper_pearson_upper(k: int, n: int, confidence: float = CONTROL_CONFIDENCE) -> float:
    """One-sided upper confidence bound of a binomial rate from k successes in n trials."""
    if n <= 0 or k >= n:
        return 1.0
    require("local", "the watermark control bound", "scipy")
    from scipy.stats import beta

    return float(beta.ppf(confidence, k + 1, n - k))


@dataclass(frozen=True)
class TestResult:
    """One test's outcome; `parts` are the tests a combined one was made of."""

    name: str
    statement: str
    trials: int
    successes: int
    p0: float
    log2_p: float
    parts: tuple[TestResult, ...] = ()

    @property
    def p_value(self) -> float:
        return 2.0 ** self.log2_p if self.log2_p > -1074 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "statement": self.statement, "trials": self.trials,
            "successes": self.successes, "p0": self.p0,
            "log2_p": max(self.log2_p, LOG2_P_FLOOR), "p_value": self.p_value}
        if self.parts:
            out["parts"] = [p.to_dict() for p in self.parts]
        return out

    def describe(self) -> str:
        return f"p = {format_p(self.log2_p)}"


def format_p(log2_p: float) -> str:
    """A p-value for people: 0.034, 3.1e-12, or 2^-1205 when a float cannot hold it."""
    if log2_p == -math.inf:
        return "0"
    if log2_p > -1000:
        p = 2.0 ** log2_p
        return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e} (2^{log2_p:.1f})"
    return f"2^{log2_p:.1f}"


def bonferroni(log2_p: float, n_sets: int) -> float:
    """log2 min(1, n_sets * p): the p of the best of `n_sets` tests, corrected."""
    if n_sets < 1:
        raise ValueError("n_sets must be at least 1")
    return min(0.0, log2_p + math.log2(n_sets))


def fisher_combine(log2_ps: Sequence[float]) -> float:
    """Fisher's method, log2 of the combined p of independent p-values given as log2 p.

    X = -2 sum ln p_i is chi-square with 2n degrees of freedom; for even degrees of freedom
    its survival is closed: P[X >= x] = exp(-x/2) sum_{j<n} (x/2)^j / j!, summed here in log
    space, so it is exact for p-values far below what a float holds (2^-100000).
    """
    if not log2_ps:
        raise ValueError("nothing to combine")
    if any(v > 0 or math.isnan(v) for v in log2_ps):
        raise ValueError("a log2 p-value must be <= 0")
    if len(log2_ps) == 1:
        return float(log2_ps[0])
    if any(v == -math.inf for v in log2_ps):
        return -math.inf
    s = -LN2 * math.fsum(log2_ps)  # x / 2
    if s == 0.0:
        return 0.0
    ls = math.log(s)
    terms = [j * ls - math.lgamma(j + 1) for j in range(len(log2_ps))]
    return min(0.0, (-s + _logsumexp(terms)) / LN2)


def disagreement_test(mark_disagree: int, marks: int, control_disagree: int,
                      controls: int) -> TestResult:
    """One-sided Fisher exact test: do the suspect's disagreements with our model fall on
    the marked inputs more than on the controls? (See the module's docstring.)"""
    if not (0 <= mark_disagree <= marks and 0 <= control_disagree <= controls):
        raise ValueError("need 0 <= disagreements <= inputs")
    total, found = marks + controls, mark_disagree + control_disagree
    log2_p = log_hypergeom_sf(mark_disagree, total, found, marks) / LN2 if total else 0.0
    p0 = found / total if total else 0.0
    return TestResult(
        "disagreement test",
        "one-sided Fisher exact test (hypergeometric upper tail): of the "
        f"{found} inputs on which the suspect's answer differs from the protected model's, "
        f"among {marks} watermark inputs and {controls} control inputs, at least "
        f"{mark_disagree} fall on the watermark inputs; marks and controls were chosen by "
        "the same secret keyed draw from the same callers' inputs, so a model made without "
        "the watermarked answers disagrees on them alike, whatever its accuracy",
        marks, mark_disagree, p0, log2_p)


def decoy_test(matches: int, disagreements: int, n_classes: int) -> TestResult:
    """X decoy hits among the m marked inputs where the suspect disagrees (k >= 3)."""
    if not 0 <= matches <= disagreements or n_classes < 2:
        raise ValueError("need 0 <= matches <= disagreements and at least 2 classes")
    p0 = 1.0 / (n_classes - 1)
    log2_p = log_binom_sf(matches, disagreements, p0) / LN2
    return TestResult(
        "decoy test",
        "one-sided exact binomial test: among the watermark inputs on which the suspect's "
        "answer differs from the protected model's, the number of answers equal to the keyed "
        f"decoy, against Binomial(m, 1/(k-1)) with k = {n_classes} classes (the decoy is "
        "uniform among the other classes under a secret key, so a model made without the "
        "watermarked answers hits it with probability 1/(k-1) where it disagrees)",
        disagreements, matches, p0, log2_p)


def copy_test(marks: int, mark_disagree: int, decoy_hits: int, controls: int,
              control_disagree: int, n_classes: int) -> TestResult:
    """The test of one set of records: was the suspect made from our marked answers?

    k = 2: the disagreement test. k >= 3: Fisher's combination of the disagreement test and
    the decoy test (valid: the decoy test is valid given the disagreements).
    """
    if n_classes < 2:
        raise ValueError("need at least 2 classes")
    if not 0 <= decoy_hits <= mark_disagree:
        raise ValueError("need 0 <= decoy_hits <= mark_disagree")
    dis = disagreement_test(mark_disagree, marks, control_disagree, controls)
    if n_classes == 2:
        return TestResult("copy test", dis.statement, dis.trials, dis.successes, dis.p0,
                          dis.log2_p, (dis,))
    decoy = decoy_test(decoy_hits, mark_disagree, n_classes)
    log2_p = fisher_combine([dis.log2_p, decoy.log2_p])
    return TestResult(
        "copy test",
        f"Fisher's combination of two tests of the same {marks} watermark inputs: (1) "
        f"{dis.statement}; (2) {decoy.statement}. The decoy test is valid given which inputs "
        "the suspect disagrees on, so the two p-values are independent for a model made "
        "without the watermarked answers, and the combination is valid",
        marks, decoy_hits, dis.p0, log2_p, (dis, decoy))


def perfect_copy_log2_p(marks: int, controls: int, n_classes: int) -> float:
    """The copy test's log2 p for a suspect that repeats every mark and agrees on every
    control: the best any suspect can reach with these records."""
    return copy_test(marks, marks, marks, controls, 0, n_classes).log2_p


def conservative_test(matches: int, asked: int, control_disagree: int, control_asked: int,
                      confidence: float = CONTROL_CONFIDENCE) -> TestResult | None:
    """DAWN-style cross-check; None without control answers."""
    if control_asked <= 0 or asked <= 0:
        return None
    p0 = clopper_pearson_upper(control_disagree, control_asked, confidence)
    log2_p = log_binom_sf(matches, asked, p0) / LN2
    return TestResult(
        "conservative test",
        "one-sided exact binomial test: the number of watermark inputs answered with the "
        f"watermark label, against Binomial(n, p0) where p0 = {p0:.4f} is the "
        f"{confidence:.1%} Clopper-Pearson upper bound of the suspect's disagreement with "
        f"the protected model on {control_asked} control inputs ({control_disagree} "
        "disagreements), counting every wrong answer as if it were the watermark label",
        asked, matches, p0, log2_p)
