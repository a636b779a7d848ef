"""Equation solving (Tramèr et al., "Stealing Machine Learning Models via Prediction APIs",
USENIX Security 2016).

A softmax-linear model (logistic regression, multinomial or binary) answers
``log p_i(x) - log p_j(x) = (w_i - w_j)·x + (b_i - b_j)``: every answered row is k-1 linear
equations in the weights. With probabilities, d+1 rows in general position determine the
model exactly (up to the softmax's shift), far below its k·(d+1) parameters, and more rows
make the least-squares solution robust to float32 answers. The rows are uniform inside the
feature ranges, as in the paper.

With labels only there are no equations; the paper then retrains on rows near the decision
boundary, found by line search (Lowd & Meek 2005): bisect between two rows the victim labels
differently. This variant runs many such bisections side by side and trains the chosen thief.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import Pool
from ..thieves import Thief
from ..victims import Recorder
from .base import Attack, Predictor, ThiefFactory

Array = np.ndarray[Any, Any]
#: Below this a float32 probability has underflowed and its log says nothing.
TINY = 1e-37


class SolvedLinear:
    """argmax(x·W + b) with W, b solved from the victim's log-probabilities."""

    def __init__(self, x: Array, proba: Array) -> None:
        t = np.log(np.clip(proba, TINY, None))
        t -= t.mean(axis=1, keepdims=True)
        design = np.hstack([x, np.ones((len(x), 1))])
        self.coef = np.linalg.lstsq(design, t, rcond=None)[0]

    def predict(self, x: Array) -> Array:
        out: Array = np.argmax(np.hstack([x, np.ones((len(x), 1))]) @ self.coef, axis=1)
        return out


class EquationSolving(Attack):
    kind = "equation"
    title = "equation solving"
    reference = "Tramèr et al., Stealing ML Models via Prediction APIs, USENIX Security 2016"
    BISECTIONS = 6
    PAIRS = 16

    def collect(self, rec: Recorder, pool: Pool) -> None:
        if self.soft:
            rec.ask(self.uniform(pool, rec.remaining))
            return
        k = rec.oracle.n_classes
        rec.ask(self.uniform(pool, min(rec.remaining, max(2 * k, 20))))
        while rec.remaining:
            x, labels, _ = rec.transcript()
            pairs = self._pairs(labels)
            if pairs is None:  # one class seen so far: widen the net
                rec.ask(self.uniform(pool, min(rec.remaining, 20)))
                continue
            a, b, la = x[pairs[:, 0]], x[pairs[:, 1]], labels[pairs[:, 0]]
            for _ in range(self.BISECTIONS):
                n = min(len(a), rec.remaining)
                if n == 0:
                    return
                a, b, la = a[:n], b[:n], la[:n]
                mid = (a + b) / 2
                same = rec.ask(mid).labels == la
                a = np.where(same[:, None], mid, a)
                b = np.where(same[:, None], b, mid)

    def _pairs(self, labels: Array) -> Array | None:
        if len(np.unique(labels)) < 2:
            return None
        i = self.rng.integers(0, len(labels), 4 * self.PAIRS)
        j = self.rng.integers(0, len(labels), 4 * self.PAIRS)
        keep = labels[i] != labels[j]
        pairs = np.stack([i[keep], j[keep]], axis=1)[:self.PAIRS]
        return pairs if len(pairs) else None

    def thief_name(self, thief: Thief) -> str:
        return "softmax-linear (solved)" if self.soft else thief.name

    def surrogate(self, x: Array, labels: Array, proba: Array | None, n_classes: int,
                  thief: ThiefFactory) -> Predictor:
        if proba is None:
            return super().surrogate(x, labels, proba, n_classes, thief)
        return SolvedLinear(x, proba)
