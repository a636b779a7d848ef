"""PRADA (Juuti et al., EuroS&P 2019): Shapiro-Wilk on a caller's nearest-row distances.

W is computed here from Royston's coefficients (AS R94, the algorithm `scipy.stats.shapiro`
runs), with the normal quantiles from the standard library, so the online monitor needs no
scipy; the tests check the two against each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from .detector_base import Detector, Reading
from .facts import Rows, answers
from .rings import EXACT, ROW, Ring, RowRing, _bad_state
from .summary import Array, Summary

#: Royston's polynomials in 1/sqrt(n) for the last two coefficients (AS R94).
_C1 = (-2.706056, 4.434685, -2.071190, -0.147981, 0.221157, 0.0)
_C2 = (-3.582633, 5.682633, -1.752461, -0.293762, 0.042981, 0.0)


@lru_cache(maxsize=64)
def _shapiro_coefficients(n: int) -> Array:
    """Royston's Shapiro-Wilk coefficients for `n` >= 3 sorted values, as AS R94 (and scipy's
    `shapiro`) computes them: exact for n = 3, one corrected end for n = 4, 5, two above."""
    if n == 3:
        a3: Array = np.array([-math.sqrt(0.5), 0.0, math.sqrt(0.5)])
        a3.setflags(write=False)
        return a3
    ppf = NormalDist().inv_cdf
    m = np.array([ppf((i - 0.375) / (n + 0.25)) for i in range(1, n + 1)])
    mm = float(m @ m)
    u = 1.0 / math.sqrt(n)
    c = m / math.sqrt(mm)
    an = c[-1] + np.polyval(_C1, u)
    if n > 5:
        an1 = c[-2] + np.polyval(_C2, u)
        phi = (mm - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * an**2 - 2 * an1**2)
    else:
        phi = (mm - 2 * m[-1] ** 2) / (1 - 2 * an**2)
    a: Array = m / math.sqrt(phi)
    a[-1], a[0] = an, -an
    if n > 5:
        a[-2], a[1] = an1, -an1
    a.setflags(write=False)
    return a


def shapiro_w(x: Array) -> float:
    """Shapiro-Wilk W of sorted values `x`; 1.0 (nothing to test) for fewer than three values
    or values all equal."""
    n = len(x)
    if n < 3 or x[-1] - x[0] <= 1e-12:
        return 1.0
    total = float(x.sum())
    spread = float(x @ x) - total * total / n  # sum of squares about the mean
    if spread <= 0.0:
        return 1.0
    # the coefficients sum to zero, so a.x = a.(x - mean)
    return float(_shapiro_coefficients(n) @ x) ** 2 / spread


class DistanceNormality(Detector):
    """PRADA: Shapiro-Wilk on the minimum distances to earlier same-class queries.

    Two departures from the paper, both for benign users it did not model:

    - W is taken on the distances without their largest `TRIM` share. A natural row unlike the
      rest of its class (a rare style) lies far from everything, and a user who asks about one
      or two classes meets it often enough for that one outlier to drag W below any useful
      floor. What synthesis leaves is an excess of *small* distances (steps from a few seeds,
      Papernot et al. 2017), which trimming the top does not hide.
    - each class keeps only its last `per_class` rows (float32), so memory is bounded; a
      thief's synthetic steps are judged against its recent seeds, which is where they are.

    The benign floor is measured (`calibrate`), on users of every class and of one class. W is
    computed from Royston's coefficients (cached per sample size, `shapiro_w`) rather than by
    `scipy.stats.shapiro`, which would cost about ten times the rest of an observe; the two
    agree to 1e-9. W is recomputed only after `every` new distances (and cached in the state):
    a verdict at most `every - 1` distances late, for a cheaper common observe.
    """

    name = "prada"

    #: W this far below the benign floor scores 1.
    SPREAD = 0.12
    #: Share of the largest distances left out of the test (1 in 16).
    TRIM = 1 / 16
    #: The floor when no simulated benign caller had enough fresh rows to measure one.
    UNMEASURED = 0.9

    def __init__(self, summary: Summary, *, per_class: int = 32, window: int = 128,
                 min_n: int = 64, every: int = 4) -> None:
        super().__init__(summary)
        d = summary.n_features
        self.seen = [RowRing(per_class, d) for _ in range(summary.n_classes)]
        self.dmin = Ring(window)
        self.w_benign, self.min_n, self.every = summary.prada_w, min_n, every
        self.w_attack = self.w_benign - self.SPREAD
        self.w, self.fresh = math.nan, 0  # cached W (nan: none yet), distances since

    @classmethod
    def calibrate(cls, summary: Summary, z: Array, proba: Array, seed: int,
                  replays: int = 8, slack: float = 0.02, orders: list[Array] | None = None
                  ) -> float:
        """PRADA's threshold delta: the lowest W over replays of benign rows, less a slack.

        Natural data is not exactly normal in this test either (Juuti et al. set delta per
        data set for that reason), so the benign floor is measured, not assumed: on `replays`
        users who draw from all the rows, on one user per class who asks about that class
        only (their distances come from one class, whose shape differs from the mixture's),
        and on the honest callers of `orders` (`null.benign_orders`: class pairs, drifting
        traffic). Each replay drops re-sends as the monitor does (`Resends`): the floor is
        that of the fresh rows the detector will see.
        """
        from .null import fit_rows_natural
        from .resends import Resends

        rng = np.random.default_rng(seed)
        labels = proba.argmax(axis=1)
        todo = [rng.permutation(len(z)) for _ in range(replays)]
        for c in np.unique(labels):
            rows = np.nonzero(labels == c)[0]
            if len(rows) > cls(summary).min_n:  # enough distances for a test
                todo.append(rows[rng.permutation(len(rows))])
        todo.extend(orders or ())
        zf = z.astype(ROW)
        lowest = 1.0
        for order in todo:
            det = cls(summary)
            resends = Resends(summary.n_features, summary.resend_radius,
                              int(summary.resend_key))
            for step, i in enumerate(order):
                if resends.seen(zf[i], natural=fit_rows_natural) is not None:  # as null's
                    continue
                det._one(zf[i], proba[i])
                d = det.dmin.view()
                if len(d) >= det.min_n and step % det.every == 0:
                    lowest = min(lowest, det.statistic(d))
        if lowest == 1.0:  # no benign caller had enough fresh rows to test: stay cautious
            return cls.UNMEASURED
        return lowest - slack

    @classmethod
    def statistic(cls, d: Array) -> float:
        """W on the distances `d` less their largest `TRIM` share."""
        x = np.sort(d)
        return cls._w(x[: len(x) - int(len(x) * cls.TRIM)], ordered=True)

    @staticmethod
    def _w(d: Array, ordered: bool = False) -> float:
        """Shapiro-Wilk W; 1.0 (nothing to test) when the distances are all equal."""
        return shapiro_w(d if ordered else np.sort(d))

    def observe(self, features: Array, proba: Array, now: float) -> None:
        for i, (label, _) in enumerate(answers(proba)):
            self._add(features[i], label)

    def take(self, rows: Rows, now: float) -> None:
        add = self._add_row
        for z, (label, _), zz in zip(rows.z, rows.answers, rows.norms, strict=True):
            add(z, label, zz)

    def _one(self, z: Array, p: Array) -> None:
        self._add(z, int(p.argmax()))

    def _add(self, z: Array, label: int) -> None:
        z = z.astype(ROW, copy=False)
        self._add_row(z, label, float(z @ z))

    def _add_row(self, z: Array, label: int, zz: float) -> None:
        """One float32 row of class `label`, whose `z @ z` is `zz`."""
        ring = self.seen[label]
        if ring.count:
            d = math.sqrt(ring.nearest(z, zz))
            if d <= EXACT:  # a repeat teaches nothing new; it would only skew the test
                return
            self.dmin.push(d)
            self.fresh += 1
        ring.push(z, zz)

    def score(self) -> Reading:
        n = self.dmin.count
        if n < self.min_n:
            return Reading(0.0, lambda: f"{n} distances, too few to test")
        if self.fresh >= self.every or math.isnan(self.w):
            self.w = self.statistic(self.dmin.view())
            self.fresh = 0
        w, floor = self.w, self.w_benign
        s = min(1.0, max(0.0, (floor - w) / (floor - self.w_attack)))
        return Reading(s, lambda: f"Shapiro-Wilk W={w:.3f} on {n} min distances, largest "
                                  f"{self.TRIM:.0%} left out (benign floor {floor:.3f})")

    def rings(self) -> dict[str, Ring]:
        return {"dmin": self.dmin, **{f"seen{c}": r for c, r in enumerate(self.seen)}}

    def state(self) -> dict[str, Array]:
        return {**super().state(), "w": np.array([self.w, self.fresh], np.float64)}

    def load(self, state: Mapping[str, Array]) -> None:
        w = np.asarray(state["w"])
        if w.shape != (2,) or not 0 <= w[1] < 2**31:
            raise _bad_state("prada cache")
        super().load(state)
        self.w, self.fresh = float(w[0]), int(w[1])
