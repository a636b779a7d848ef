"""Whether a row could have come from the data: the structure natural rows share, synthesis breaks.

Real data is rarely an arbitrary point of R^d. Features are recorded at a precision (pixel
intensities are integers, a lab value has two decimals, a rounded export has three), they stay
within their range, and tabular data often lies on or near a linear subspace (derived columns,
repeated sensors, images whose pixels move together). Rows a thief makes rather than draws
(noise, shift or mixup augmentation, Jacobian steps, uniform points, equation solving) break
that structure: `Nature.unnatural` says, per row, whether any of three tests fails:

- off the lattice: a feature whose fit values all lie on a decimal grid (integers, two decimals)
  takes a value off it;
- out of bounds: a feature beyond its fit range widened by 1.5 standard deviations (a small
  fit set does not see a heavy tail's extremes);
- off the subspace: the row's energy in the data's weakest principal directions, each scaled by
  its own variance (the whitened residual), beyond the 99th percentile of new natural rows'
  (cross-fitted).

How often natural rows fail, the null every score is compared with, is measured honestly at
fit by cross-fitting: the tests are fitted on four fifths of the fit rows and applied to the
fifth left out, five times, so each fit row gets the verdict a new natural row would. Where
data has no structure finer than the noise (isotropic continuous blobs), a noised row *is* a
natural row for every test here, and nothing flags it: that limit is reported, not hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

#: A value is on its feature's grid when within this share of a grid step of a grid point.
TOL = 0.02
#: Decimal grids tried, coarsest first, as exponents of ten: 10^0 (integers) to 10^-6.
DECIMALS = range(0, 7)
#: Float32 carries about 6e-8 of a value: a grid finer than this share of the values cannot
#: be told from float32 rounding, so it is not used.
F32 = 6e-8
#: Bounds are widened by this many of the feature's standard deviations (floored at half the
#: mean one, so a feature constant in the fit rows may still take a rare value).
BOUND_SD = 1.5
#: Per-row residual cut: this quantile of natural rows' whitened residual.
RESIDUAL_Q = 0.99
#: Variance floor of a principal direction, in standardized units (noise at 1% of a
#: feature's sd has variance 1e-4): a direction the data never moves in is measured against
#: noise at that level, not divided by zero.
VAR_FLOOR = 1e-4
#: Folds of the cross-fitted null.
FOLDS = 5


def lattice_steps(x: Array) -> Array:
    """Per feature, the coarsest decimal step every value lies on (0: none, continuous)."""
    steps = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        v = x[:, j]
        top = float(np.abs(v).max(initial=0.0))
        for k in DECIMALS:
            q = 10.0 ** -k
            if top * F32 / q > TOL / 4:  # float32 rounding alone would move values off it
                continue
            g = v / q
            if np.all(np.abs(g - np.rint(g)) <= TOL / 4):
                steps[j] = q
                break
    return steps


@dataclass(frozen=True)
class Nature:
    """The fitted tests: grid steps, bounds and whitened weak directions (standardized space)."""

    step: Array  # [d] decimal grid step, 0 for continuous features
    lo: Array  # [d] raw-space bounds
    hi: Array  # [d]
    weak: Array  # [r, d] weak principal directions divided by their standard deviation
    cut: float  # natural rows' RESIDUAL_Q whitened residual (sum of squares)

    @classmethod
    def fit(cls, x: Array, z: Array, cut: float | None = None) -> Nature:
        """Fit on raw rows `x` and their standardized form `z` (the summary's); `cut` is the
        residual cut (default: the `RESIDUAL_Q` quantile of these rows', in sample)."""
        std = x.std(axis=0)
        std = np.maximum(std, 0.5 * float(std.mean()))  # as the summary's scale floors it
        lo, hi = x.min(axis=0) - BOUND_SD * std, x.max(axis=0) + BOUND_SD * std
        nature = cls(lattice_steps(x), lo, hi, weak_directions(z), 0.0)
        if cut is None:
            resid = nature.residual(z)
            cut = float(np.quantile(resid, RESIDUAL_Q)) if len(resid) else 0.0
        return replace(nature, cut=cut)

    def residual(self, z: Array) -> Array:
        """Each row's whitened energy in the weak directions (0 without any)."""
        if not len(self.weak):
            return np.zeros(len(z))
        t = z @ self.weak.T
        out: Array = np.einsum("ij,ij->i", t, t)
        return out

    @cached_property
    def grid(self) -> tuple[Array, Array]:
        """(the features on a decimal grid, their steps): taken once, not per observe."""
        on = self.step > 0
        return np.nonzero(on)[0], self.step[on]

    def off_grid(self, x: Array) -> Array:
        """Rows beyond the bounds or off the decimal grid (bool [n])."""
        out: Array = np.asarray(((x < self.lo) | (x > self.hi)).any(axis=1))
        features, steps = self.grid
        if len(features):
            g = x[:, features] / steps
            out |= (np.abs(g - np.rint(g)) > TOL).any(axis=1)
        return out

    def unnatural(self, x: Array, z: Array) -> Array:
        """Per row of raw `x` [n, d] and standardized `z`: fails any test (bool [n])."""
        out = self.off_grid(x)
        if len(self.weak):
            out |= self.residual(z) > self.cut
        return out


def weak_directions(z: Array, share: float = 0.5) -> Array:
    """The principal directions of `z` beyond those holding `share` of its variance, each
    divided by its standard deviation (floored at `VAR_FLOOR`): [r, d], r may be 0.

    A natural row's energy there is small and roughly even; isotropic noise added to a row
    lands in every direction alike, and stands out in the ones natural rows barely use.
    """
    n, d = z.shape
    if n < 3 or d < 2:
        return np.zeros((0, d))
    c = z - z.mean(axis=0)
    var, vec = np.linalg.eigh(c.T @ c / (n - 1))  # ascending
    var, vt = np.clip(var[::-1], 0.0, None), vec[:, ::-1].T
    total = float(var.sum())
    if total <= 0:
        return np.zeros((0, d))
    keep = int(np.searchsorted(np.cumsum(var) / total, share) + 1)
    keep = min(max(keep, 1), d - 1)
    weak: Array = vt[keep:] / np.sqrt(np.maximum(var[keep:], VAR_FLOOR))[:, None]
    return weak


def crossfit(x: Array, z: Array, seed: int, folds: int = FOLDS) -> tuple[Array, float]:
    """(each row's verdict from tests fitted without it, the residual cut): the cut is the
    `RESIDUAL_Q` quantile of the rows' residuals under weak directions fitted without them,
    what new natural rows show (in sample, a small fit set's residuals are far too small),
    and the verdicts are natural rows' honest failure rate under it."""
    n = len(x)
    if n < 2 * folds:
        nat = Nature.fit(x, z)
        return np.zeros(n, dtype=bool), nat.cut
    part = np.random.default_rng(seed).permutation(n) % folds
    off, resid = np.zeros(n, dtype=bool), np.zeros(n)
    for f in range(folds):
        held = part == f
        nat = Nature.fit(x[~held], z[~held])
        off[held] = nat.off_grid(x[held])
        resid[held] = nat.residual(z[held])
    cut = float(np.quantile(resid, RESIDUAL_Q))
    flags: Array = off | (resid > cut)
    return flags, cut
