"""The statistics of ownership verification, exact in log space.

A p-value like 2^-200 is a perfectly good answer, but it underflows a float's tail
functions; the binomial tail here is summed in log space (`math.lgamma`, log-sum-exp),
so it is exact down to any size and reported as log2 p as well.

Two tests of the same observation, both stated in the evidence bundle:

* **decoy test** (the verdict). Each marked input was answered with a keyed decoy, uniform
  among the classes other than the model's own answer, drawn by HMAC-SHA256 under a secret
  the suspect's maker never had. If the suspect was made without our marked answers (H0),
  then on any marked input where it disagrees with our model, its answer equals the decoy
  with probability exactly 1/(k-1), independently across inputs. With m such inputs and X
  matches, p = P[Binomial(m, 1/(k-1)) >= X]. Conditioning on disagreement accounts for the
  suspect's accuracy: a poor model disagrees often but still hits the decoy only by chance.
* **conservative test** (DAWN-style, a cross-check). p0 is the one-sided 99.9%
  Clopper-Pearson upper bound of the suspect's disagreement rate with our model on the
  control inputs (same caller, unmarked answers), as if every wrong answer were the
  watermark label; p = P[Binomial(n, p0) >= X] over all n marked inputs asked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

LN2 = math.log(2.0)
CONTROL_CONFIDENCE = 0.999


def log_binom_sf(x: int, n: int, p: float) -> float:
    """ln P[Binomial(n, p) >= x], exact (log-sum-exp of the terms)."""
    if x <= 0:
        return 0.0
    if x > n or p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [base - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq
             for j in range(x, n + 1)]
    top = max(terms)
    return min(0.0, top + math.log(math.fsum(math.exp(t - top) for t in terms)))


def clopper_pearson_upper(k: int, n: int, confidence: float = CONTROL_CONFIDENCE) -> float:
    """One-sided upper confidence bound of a binomial rate from k successes in n trials."""
    if n <= 0 or k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, k + 1, n - k))


@dataclass(frozen=True)
class TestResult:
    name: str
    statement: str
    trials: int
    successes: int
    p0: float
    log2_p: float

    @property
    def p_value(self) -> float:
        return 2.0 ** self.log2_p if self.log2_p > -1074 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "p_value": self.p_value}

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


def decoy_test(matches: int, disagreements: int, n_classes: int) -> TestResult:
    """The verdict's test: X decoy hits among the m marked inputs where the suspect disagrees."""
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
