"""Share detectors: a windowed count of flagged queries against what benign callers show.

Each flags one kind of query a thief sends more often than a user: near the decision
boundary (`BoundaryProbing`), unnatural (`Synthetic`), re-sends answered another class
(`Flips`), out of distribution (`OutOfDistribution`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from . import null
from .detector_base import Z_HIGH, Z_LOW, Detector, Reading, ramp
from .facts import Cells, Judge, Rows
from .rings import Ring
from .summary import Array, Summary
from .volume import PeerStats


class ShareWindow:
    """The last `size` flags and each one's expected rate, with their sums kept as they go.

    One for every share detector, and a second, longer one for `BoundaryProbing`: the count
    is compared with its expectation by the variance-stabilized binomial z (`null.share_z`),
    and the score ramps from `z0` over `Z_HIGH - Z_LOW`.
    """

    def __init__(self, size: int) -> None:
        self.flags = Ring(size, dtype=np.bool_)
        self.expected = Ring(size)
        self.hits, self.sum = 0, 0.0

    def push(self, flag: bool, expect: float) -> None:
        # `Ring.push` of both rings, inlined: five share windows a row make this the
        # detectors' most frequent call
        flags, expected = self.flags, self.expected
        fh, eh = flags.head, expected.head
        if fh == flags.cap or eh == expected.cap:  # storage full before the first wrap
            if fh == flags.cap:
                flags.grow()
            if eh == expected.cap:
                expected.grow()
        if flags.count == flags.size:
            self.hits -= flags.data[fh]
            self.sum -= expected.data[eh]
        else:
            flags.count += 1
        if expected.count < expected.size:
            expected.count += 1
        flags.data[fh] = flag
        expected.data[eh] = expect
        flags.head = (fh + 1) % flags.size
        expected.head = (eh + 1) % expected.size
        self.hits += flag
        self.sum += expect

    def reading(self, what: str, z0: float) -> Reading:
        n, hits, exp = self.flags.count, self.hits, max(self.sum, 0.0)
        # share_z and ramp are 0 for a window within its expectation (most of them): the
        # same values, without the calls
        z = null.share_z(hits, exp, n) if hits > exp else 0.0
        high = z0 + Z_HIGH - Z_LOW
        score = 0.0 if z <= z0 < high else ramp(z, z0, high)
        return Reading(score,
                       lambda: f"{hits}/{n} {what} (benign {exp / n:.1%}), z={z:.1f} "
                               f"(benign callers up to {z0 - null.MARGIN:.1f})")

    def recount(self) -> None:
        """Take the sums again from the rings (after they were loaded)."""
        self.hits = int(self.flags.view().sum())
        self.sum = float(self.expected.view().sum())


class _ShareDetector(Detector):
    """A windowed count of flagged queries against the count benign callers would show.

    Each row carries its own expected flag rate (`expect`; the class's `base` unless a
    detector knows better, e.g. the rate of the cell the row falls in), so the window's
    expected count follows where the caller is: an honest caller drifting through a region
    where natural rows are often flagged is expected to be flagged often there. The score
    ramps from `z0` (beyond the most extreme benign caller simulated at fit, at least
    `Z_LOW`), see `ShareWindow`.
    """

    base: float = 0.01
    what: str = "flagged"

    def __init__(self, summary: Summary, *, window: int = 200, min_n: int = 20) -> None:
        super().__init__(summary)
        self.window = ShareWindow(window)
        self.flags = self.window.flags
        self.min_n = min_n
        self.z0 = Z_LOW

    @property
    def hits(self) -> int:
        return self.window.hits

    def _flag(self, flag: bool, expect: float | None = None) -> None:
        self.window.push(flag, self.base if expect is None else expect)

    def score(self) -> Reading:
        n = self.flags.count
        if n < self.min_n:
            return Reading(0.0, lambda: f"{n} queries, too few")
        return self.window.reading(self.what, self.z0)

    @classmethod
    def null(cls, flags: Array, expect: Array, orders: list[Array], *, window: int = 200,
             min_n: int = 20) -> float:
        """Where the score starts, from benign callers' flags and expectations (`null`)."""
        return null.start(null.window_extreme(flags, expect, orders, window, min_n), Z_LOW)

    def rings(self) -> dict[str, Ring]:
        return {"flags": self.window.flags, "expected": self.window.expected}

    def load(self, state: Mapping[str, Array]) -> None:
        super().load(state)
        self.window.recount()


class _CellShare(_ShareDetector):
    """A share detector whose expected rate for a row is the rate of the cell it falls in:
    `RATES` and `Z0` name the `Summary` fields with each cell's rate and the score's start."""

    RATES: str
    Z0: str

    def __init__(self, summary: Summary, *, cells: Cells | None = None, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.cells = cells or Cells(summary)
        self.rates: list[float] = getattr(summary, self.RATES).tolist()
        self.z0 = getattr(summary, self.Z0)

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells)

    def _push(self, flags: Iterable[bool], cells: Iterable[int]) -> None:
        push, rates = self.window.push, self.rates
        for flag, cell in zip(flags, cells, strict=True):
            push(flag, rates[cell])


class BoundaryProbing(_CellShare):
    """Share of queries whose top-1 margin is below the cut of the class the model answers.

    The summary's cut for a class is a low quantile of the data's margins for that class
    (`Summary.margin_cuts`), so each class contributes the same benign share: a user who only
    asks about a class the model often confuses is compared with that class, not flagged.
    A row's expected rate is its cell's (`Summary.cell_boundary`), so a caller whose traffic
    drifts along a stretch of boundary is compared with what natural rows there show.
    """

    name = "boundary"
    what = "near the boundary"
    #: Lowest expected rate of a cell.
    FLOOR = 0.02
    RATES, Z0 = "cell_boundary", "boundary_z0"

    #: The long window: a persistent moderate excess (active learning through a proxy model
    #: picks rows only somewhat nearer the boundary) shows over more rows than the short one.
    LONG, LONG_MIN = 800, 400

    def __init__(self, summary: Summary, *, cells: Cells | None = None, **kw: Any) -> None:
        super().__init__(summary, cells=cells, **kw)
        self.cuts: list[float] = summary.margin_cuts.tolist()
        self.z0_long = summary.boundary_z0_long
        self.long = ShareWindow(self.LONG)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        self.take(Rows(None, features, proba, self.cells), now)

    def take(self, rows: Rows, now: float) -> None:
        short, long = self.window, self.long
        for (label, margin), cell in zip(rows.answers, rows.cells, strict=True):
            flag, e = margin < self.cuts[label], self.rates[cell]
            short.push(flag, e)
            long.push(flag, e)

    def score(self) -> Reading:
        short = super().score()
        if self.long.flags.count < self.LONG_MIN:
            return short
        long = self.long.reading(self.what, self.z0_long)
        return long if long.score > short.score else short

    @classmethod
    def null_long(cls, flags: Array, expect: Array, orders: list[Array]) -> float:
        return cls.null(flags, expect, orders, window=cls.LONG, min_n=cls.LONG_MIN)

    def rings(self) -> dict[str, Ring]:
        return {**super().rings(), "long": self.long.flags,
                "long.expected": self.long.expected}

    def load(self, state: Mapping[str, Array]) -> None:
        super().load(state)
        self.long.recount()


@dataclass(frozen=True)
class Shared:
    """What the detectors of one table of callers share: peer statistics, the cell lookup
    and the naturalness tests."""

    peers: PeerStats
    cells: Cells
    judge: Judge


class Synthetic(_CellShare):
    """Share of fresh queries no natural row would be: off the data's decimal grid, beyond
    its bounds, or off its weak principal directions (`naturalness`).

    What noise, shift, mixup and Jacobian augmentation, uniform sampling and equation solving
    send. A row's expected rate is the cross-fitted rate of natural rows in its cell
    (`Summary.cell_unnatural`, at least `FLOOR`). Re-sends never reach it: a re-read with
    sensor noise is off the grid too, and teaches nothing.
    """

    name = "synthetic"
    what = "unnatural"
    #: Lowest expected rate of a cell: data drifts (a new decimal, a new range) in use.
    FLOOR = 0.005
    RATES, Z0 = "cell_unnatural", "unnatural_z0"

    def __init__(self, summary: Summary, *, cells: Cells | None = None,
                 judge: Judge | None = None, **kw: Any) -> None:
        super().__init__(summary, cells=cells, **kw)
        self.judge = judge or Judge(summary)

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells, judge=shared.judge)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        """Standardized rows only: the raw rows are taken back from them (float32 keeps a
        grid step's worth for any grid `naturalness` uses); the monitor calls `observe_raw`."""
        x = features.astype(np.float64) * self.summary.scale + self.summary.mean
        self.observe_raw(x, features, proba, now)

    def observe_raw(self, x: Array, features: Array, proba: Array, now: float) -> None:
        self.take(Rows(x, features, proba, self.cells, self.judge), now)

    def take(self, rows: Rows, now: float) -> None:
        self._push(rows.unnatural, rows.cells)


class Flips(_CellShare):
    """Share of noisy re-sends whose answer differs from the answer of the row they re-send.

    A re-send (`resends`) teaches a thief little only while its answer stays the same: an
    honest re-read with sensor noise changes class only where its row lies within the noise
    of the boundary, while a walk or a bisection that stays within the re-send radius of its
    last fresh row does it to find the boundary. A row's expected rate is its cell's, measured
    at fit by re-reading the fit rows with noise at 10% of each feature's sd through the
    model (`Summary.fit`'s `predict`); without the model it is `DEFAULT`, a cautious rate.
    """

    name = "flips"
    what = "re-sends answered another class"
    sees_resends = True
    FLOOR, DEFAULT = 0.02, 0.25
    RATES, Z0 = "cell_flip", "flip_z0"

    def observe(self, features: Array, proba: Array, now: float) -> None:
        """Fresh rows are not this detector's business."""

    def observe_resends(self, features: Array, flips: list[bool], now: float) -> None:
        self.take_resends(Rows(None, features, np.zeros((len(features), 0)), self.cells),
                          flips, now)

    def take_resends(self, rows: Rows, flips: list[bool], now: float) -> None:
        self._push(flips, rows.cells)


class OutOfDistribution(_CellShare):
    """Share of queries farther from every k-means centroid than 99% of new natural rows.

    The radius and each cell's expected rate are cross-fitted (`Summary.fit`): a row's
    distance is measured to centroids fitted without it, as a new row's would be, so a small
    fit set (where in-sample distances are short) does not make every caller look far.
    """

    name = "ood"
    what = "out of distribution"
    #: Lowest expected rate of a cell.
    FLOOR = 0.01
    RATES, Z0 = "cell_ood", "ood_z0"

    def observe(self, features: Array, proba: Array, now: float) -> None:
        self.take(Rows(None, features, proba, self.cells), now)

    def take(self, rows: Rows, now: float) -> None:
        radius2 = self.summary.ood_radius**2
        cells, d2s = rows.where
        self._push((d2 > radius2 for d2 in d2s), cells)
