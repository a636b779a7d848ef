"""Reverse sigmoid (Lee et al., "Defending against NN model stealing attacks using deceptive
perturbations", IEEE S&P Workshops 2019), with settings refused when they would change answers.

Each probability y is moved by ``r(y) = beta * (sigmoid(gamma * logit(y)) - 1/2)`` and the row
renormalised. The perturbation is small in probability space but large in log space, which is
where a thief trained with cross-entropy or logit matching learns, so a soft-label thief is
pulled away from the model. Its weakness is that a careless setting also reorders classes:
``f(y) = y - r(y)`` is not monotone when ``beta * gamma`` is large near y = 1/2, or for any
gamma < 1 near y = 0 (a 1e-9 class can overtake a 0.3 top class at beta=1, gamma=0.1, the
setting ART uses as its example). Changing the top-1 class would change the model's answers
for every caller, so `ReverseSigmoid.check` searches for such a pair and refuses the setting,
naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .base import Array, Defense, normalise

#: Probabilities are clipped to [EPS, 1 - EPS] before the logit, as in the paper's code.
EPS = 1e-9


def _f(y: Array, beta: float, gamma: float) -> Array:
    """The shaped value before renormalisation, clipped at 0.

    ``sigmoid(gamma * logit(y)) = 1 / (1 + ((1 - y) / y) ** gamma)``: the same value in
    fewer array operations (each costs about a microsecond on one answer).
    """
    yc = np.minimum(np.maximum(y, EPS), 1.0 - EPS)  # np.clip costs twice as much
    sig = beta / (1.0 + ((1.0 - yc) / yc) ** gamma)  # beta * sigmoid(gamma * logit(y))
    out: Array = np.maximum((y + 0.5 * beta) - sig, 0.0)
    return out


def reverse_sigmoid(proba: Array, beta: float, gamma: float) -> Array:
    """The transform itself, without the ranking check (use `ReverseSigmoid` for that)."""
    return normalise(_f(np.asarray(proba, dtype=np.float64), beta, gamma))


def ranking_flip(beta: float, gamma: float, n_classes: int) -> tuple[float, float] | None:
    """A (top, other) pair of probabilities whose order the setting reverses, or None.

    A class with probability ``top >= 1/n_classes`` can face any other class with
    probability ``other < top`` and ``other <= 1 - top``. The top class keeps its place when
    ``f(top)`` exceeds the largest ``f`` over that range, so a grid over (0, 1] (dense near 0,
    where gamma < 1 misbehaves, and near 1/2, where beta*gamma > 1 does) with running maxima
    of ``f`` finds the worst pair for every top value in one pass.
    """
    grid = np.unique(np.concatenate([
        np.geomspace(EPS, 1.0, 4001), np.linspace(0.0, 1.0, 8001)[1:],
        np.linspace(0.45, 0.55, 2001)]))
    grid = grid[np.concatenate([[True], np.diff(grid) > 1e-9 * grid[1:]])]
    f = _f(grid, beta, gamma)
    running = np.maximum.accumulate(f)
    idx = np.arange(grid.size)
    rivals = np.where(grid <= 0.5, idx - 1,
                      np.searchsorted(grid, 1.0 - grid, side="right") - 1)
    rivals = np.minimum(rivals, idx - 1)
    bad = (grid >= 1.0 / n_classes) & (rivals >= 0)
    bad[bad] = f[bad] <= running[rivals[bad]]
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    other = grid[int(np.argmax(f[:rivals[i] + 1]))]
    return float(grid[i]), float(other)


class ReverseSigmoid(Defense):
    """Reverse sigmoid with parameters checked per number of classes before first use."""

    kind = "rsig"
    SPEC = "rsig:{beta:g},{gamma:g}"
    DESCRIPTION = "reverse sigmoid (beta={beta:g}, gamma={gamma:g})"

    def __init__(self, beta: float, gamma: float) -> None:
        if not (beta > 0 and gamma > 0 and np.isfinite(beta) and np.isfinite(gamma)):
            raise ConfigurationError(
                f"reverse sigmoid: beta and gamma must be positive, got beta={beta}, "
                f"gamma={gamma}")
        self.beta = float(beta)
        self.gamma = float(gamma)
        self._checked: set[int] = set()

    def check(self, n_classes: int) -> None:
        if n_classes in self._checked:
            return
        flip = ranking_flip(self.beta, self.gamma, n_classes)
        if flip is not None:
            top, other = flip
            raise ConfigurationError(
                f"reverse sigmoid beta={self.beta:g}, gamma={self.gamma:g} would change answers "
                f"of a {n_classes}-class model: a class with probability {other:.2g} would "
                f"outrank the top class at {top:.2g}; keep beta*gamma < 1 and gamma >= 1 "
                "(e.g. beta=0.8, gamma=1.2)")
        self._checked.add(n_classes)

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        return normalise(_f(p, self.beta, self.gamma))
