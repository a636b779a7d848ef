"""Fingerprinting without the watermark: a second opinion from the decision boundary.

The protected model's decision boundary is sampled at keyed points: pairs of inputs the
model labels differently (drawn from domain rows with a generator seeded by a key derived
from the watermark secret, so a thief cannot know them in advance), a binary search along
the segment to where the label flips, then a step of `MARGIN` of the segment beyond it.
A copy that learnt the boundary agrees with the protected model there more than models
trained independently on the same data do. The suspect's agreement is compared with that of
reference models the owner trained independently: a z-score against their mean and spread,
and the rank (how many references agree as much).

It needs no watermarked answers, so it also speaks about a copy of the weights themselves
(which repeats no decoy), but it is only a second opinion: measured on digits, a label-only
thief trained on a few thousand natural rows agrees at the boundary only a little more than
independent models (see bench/watermark.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigurationError

Array = np.ndarray[Any, Any]
Labeler = Callable[[Array], Sequence[str]]
#: Beyond the boundary by this share of the segment (chosen on digits: there a copy and
#: independent models differ most).
MARGIN = 0.05
SEARCH_STEPS = 14


def _labels(fn: Labeler, x: Array) -> Array:
    return np.asarray([str(v) for v in fn(x)], dtype=object)


def boundary_points(protected: Labeler, seeds: Array, key: bytes, n: int) -> tuple[Array, Array]:
    """`n` keyed points just across the protected model's boundary, and its labels there."""
    seeds = np.asarray(seeds, dtype=np.float64)
    base = _labels(protected, seeds)
    if len(seeds) < 2 or len(set(base.tolist())) < 2:
        raise ConfigurationError("fingerprint: the seed rows need at least two classes")
    rng = np.random.default_rng(int.from_bytes(key[:8], "big"))
    i, j = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    for _ in range(20):
        a = rng.integers(0, len(seeds), 4 * n)
        b = rng.integers(0, len(seeds), 4 * n)
        keep = base[a] != base[b]
        i, j = np.concatenate([i, a[keep]]), np.concatenate([j, b[keep]])
        if len(i) >= n:
            break
    i, j = i[:n], j[:n]
    start, end, first = seeds[i], seeds[j], base[i]
    lo, hi = np.zeros(len(i)), np.ones(len(i))
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        same = _labels(protected, start + mid[:, None] * (end - start)) == first
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    t = np.clip(hi + MARGIN, 0.0, 1.0)
    points = start + t[:, None] * (end - start)
    return points, _labels(protected, points)


@dataclass(frozen=True)
class FingerprintResult:
    points: int
    suspect_agreement: float
    reference_agreements: list[float]
    z: float | None
    log2_p_normal: float | None
    rank_p: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "keyed decision-boundary points (binary search between inputs the "
                      f"protected model labels differently, then {MARGIN:.0%} of the segment "
                      "beyond the boundary); agreement of the suspect with the protected model "
                      "there, against the agreement of independently trained reference models",
            "points": self.points, "suspect_agreement": self.suspect_agreement,
            "reference_agreements": self.reference_agreements, "z": self.z,
            "log2_p_normal": self.log2_p_normal,
            "rank_p": self.rank_p,
            "statement": "rank_p = (1 + references agreeing at least as much) / "
                         "(1 + references); log2_p_normal: one-sided normal tail of z, "
                         "z = (suspect - mean of references) / their standard deviation",
        }


def compare(suspect: Sequence[str], protected: Array, references: Sequence[Sequence[str]]
            ) -> FingerprintResult:
    """The suspect's agreement with `protected` labels, against the references'."""
    def agree(labels: Sequence[str]) -> float:
        return float(np.mean(np.asarray([str(v) for v in labels], dtype=object) == protected))

    a = agree(suspect)
    refs = [agree(r) for r in references]
    z = log2_p = None
    if len(refs) >= 2:
        sd = float(np.std(refs, ddof=1))
        z = (a - float(np.mean(refs))) / max(sd, 1.0 / len(protected))
        log2_p = math.log(max(0.5 * math.erfc(z / math.sqrt(2.0)), 1e-300)) / math.log(2.0)
    rank = (1 + sum(r >= a for r in refs)) / (1 + len(refs))
    return FingerprintResult(len(protected), a, refs, z, log2_p, rank)
