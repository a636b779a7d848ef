"""Extraction detectors: each watches one caller's queries and says how unlike use they look.

Every detector sees rows already standardized by the model's `Summary` and the model's
probabilities for them, keeps fixed-size numpy ring buffers (so a caller with a million
queries costs what one with a few hundred does), and scores in [0, 1], where 0 is "as benign
traffic looks" and 1 is "certainly not use". Scores ramp between two z-values of a
statistic against the benign expectation, so a threshold means the same for every detector.

- `DistanceNormality`: PRADA (Juuti et al., "PRADA: Protecting against DNN Model Stealing
  Attacks", EuroS&P 2019). Natural queries' distances to a caller's earlier queries of the
  same predicted class are roughly normal; synthetic ones (perturbations of few seeds, random
  points) are not. A Shapiro-Wilk W below the benign range raises the score.
- `BoundaryProbing`: many extraction attacks (Tramèr et al. 2016 line search; active
  learning; Jacobian augmentation, Papernot et al. 2017) ask where the model is unsure.
- `NearDuplicates`: stateful detection of black-box attacks (Chen, Carlini and Wagner,
  "Stateful Detection of Black-Box Adversarial Attacks", 2020): many queries close to recent ones.
- `OutOfDistribution`: synthetic queries fall outside the data (uniform random rows, pushed
  augmentations); the share beyond the data's own 99th-percentile radius is compared with 1%.
- `Coverage`: a thief covers every region and class faster than a user drawing from the data
  distribution would; distinct cells in the last window vs the iid expectation.
- `VolumeVelocity`: how much and how fast, against the caller's own history and its peers
  (the model's other callers, through a shared `PeerStats`). Weak evidence on its own.

A detector's whole state is `state()`: named numpy arrays, restored with `load`, so a
monitor can be snapshotted without pickle. Nearest-row searches screen with one matrix-vector
product against cached row norms and measure the winner exactly; this keeps a single-row
observe of every detector within tens of microseconds.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Self

import numpy as np

from ..errors import ConfigurationError
from .summary import Array, Summary, expected_distinct, top1_margin

#: z-values between which a score ramps from 0 to 1.
Z_LOW, Z_HIGH = 4.0, 7.0
#: Standardized distances at or below this are the same row sent again.
EXACT = 1e-9


@dataclass(frozen=True)
class Reading:
    """One detector's verdict: a score in [0, 1] and why, in a few words."""

    score: float
    why: str


def ramp(z: float, low: float = Z_LOW, high: float = Z_HIGH) -> float:
    return float(min(1.0, max(0.0, (z - low) / (high - low))))


def log_ramp(ratio: float, low: float, high: float) -> float:
    """`ramp` on a ratio's logarithm: 0 at `low` times, 1 at `high` times."""
    if ratio <= low:
        return 0.0
    return ramp(math.log(ratio), math.log(low), math.log(high))


def share_excess(hits: int, n: int, base: float) -> float:
    """z of an observed share `hits/n` against a benign share `base` (binomial)."""
    if n == 0:
        return 0.0
    base = min(max(base, 0.01), 0.99)
    return (hits / n - base) / math.sqrt(base * (1.0 - base) / n)


def nearest(rows: Array, norms: Array, z: Array) -> tuple[int, float]:
    """(index, squared distance) of the row nearest `z`.

    |r - z|^2 = |r|^2 - 2 r.z + |z|^2: one matrix-vector product picks the winner; its distance
    is then computed exactly, so an exact repeat still measures 0.
    """
    j = int((norms - 2.0 * (rows @ z)).argmin())
    diff = rows[j] - z
    return j, float(diff @ diff)


def _bad_state(what: str) -> ConfigurationError:
    return ConfigurationError(f"monitor state does not fit this detector: {what}")


class Ring:
    """A fixed-size ring buffer of rows (or scalars): the whole of a detector's memory."""

    def __init__(self, size: int, width: int = 0, dtype: Any = np.float64) -> None:
        self.data: Array = np.zeros((size, width) if width else size, dtype=dtype)
        self.size, self.count, self.head = size, 0, 0

    def push(self, value: Any) -> None:
        self.data[self.head] = value
        self.head = (self.head + 1) % self.size
        if self.count < self.size:
            self.count += 1

    def oldest(self) -> Any:
        """What the next push overwrites (only meaningful once full)."""
        return self.data[self.head]

    def view(self) -> Array:
        """The filled part (order is not kept; no detector needs it)."""
        return self.data[: self.count]

    def state(self, name: str) -> dict[str, Array]:
        return {name: self.data, f"{name}.at": np.array([self.count, self.head], np.int64)}

    def load(self, name: str, state: Mapping[str, Array]) -> None:
        data, at = np.asarray(state[name]), np.asarray(state[f"{name}.at"])
        if data.shape != self.data.shape or data.dtype != self.data.dtype:
            raise _bad_state(f"{name} is {data.dtype}{list(data.shape)}, "
                             f"expected {self.data.dtype}{list(self.data.shape)}")
        if at.shape != (2,) or not (0 <= at[0] <= self.size and 0 <= at[1] < self.size):
            raise _bad_state(f"{name} position {at.tolist()}")
        self.data[...] = data
        self.count, self.head = int(at[0]), int(at[1])

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


class RowRing(Ring):
    """A ring of rows that keeps each row's squared norm, for `nearest`."""

    def __init__(self, size: int, width: int) -> None:
        super().__init__(size, width)
        self.norms: Array = np.zeros(size)

    def push(self, value: Any) -> None:
        self.norms[self.head] = float(value @ value)
        super().push(value)

    def nearest(self, z: Array) -> float:
        """Squared distance from `z` to the nearest row held (inf when empty)."""
        if not self.count:
            return math.inf
        return nearest(self.view(), self.norms[: self.count], z)[1]

    def load(self, name: str, state: Mapping[str, Array]) -> None:
        super().load(name, state)
        self.norms = np.einsum("ij,ij->i", self.data, self.data)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.norms.nbytes)


class PeerStats:
    """What a model's callers do, for "more than its peers": one bounded table per model.

    Each caller reports its volume over the last `HOURS` hours and its busiest hour in them as
    it is observed. The table keeps the `capacity` most recent callers (LRU). Quantiles are read
    from a sorted view rebuilt when the hour turns or after `resort_every` reports (after as
    many reports as there are callers, while they are fewer), so a read is O(1) and a rebuild
    (two sorts of at most `capacity` values) falls on under 1% of observes. A caller's own entry
    is left out of its comparison (by its rank in the sorted view): a thief is not its own peer.
    Values are as of each caller's last query, a bias towards the busy that only raises the bar.
    """

    HOURS = 48
    FIELDS = ("volume", "busiest")

    def __init__(self, capacity: int = 1024, resort_every: int = 128) -> None:
        self.capacity, self.resort_every = capacity, resort_every
        self.slots: OrderedDict[str, int] = OrderedDict()
        self.values: Array = np.zeros((2, capacity))
        self.hour: Array = np.full(capacity, -1, np.int64)  # hour of each caller's last report
        self.sorted: list[Array] = [np.zeros(0), np.zeros(0)]
        self.rank: Array = np.full((2, capacity), -1, np.int64)
        self.pending, self.sorted_hour = 0, -1

    def update(self, key: str, volume: float, busiest: float, hour: int) -> None:
        slot = self.slots.get(key)
        joined = slot is None
        if slot is None:
            if len(self.slots) < self.capacity:
                slot = len(self.slots)
            else:
                _, slot = self.slots.popitem(last=False)
                self.rank[:, slot] = -1  # the sorted view holds the old caller's values
            self.slots[key] = slot
        else:
            self.slots.move_to_end(key)
        self.values[0, slot], self.values[1, slot] = volume, busiest
        self.hour[slot] = max(int(self.hour[slot]), hour) if not joined else hour
        self.pending += 1
        if self.pending >= min(self.resort_every, len(self.slots)) or hour > self.sorted_hour:
            self._resort(max(hour, self.sorted_hour))

    def _resort(self, hour: int) -> None:
        n = len(self.slots)
        live = np.nonzero(self.hour[:n] > hour - self.HOURS)[0]
        self.rank[:] = -1
        for f in range(2):
            order = np.argsort(self.values[f, live], kind="stable")
            self.sorted[f] = self.values[f, live[order]]
            self.rank[f, live[order]] = np.arange(len(live))
        self.pending, self.sorted_hour = 0, hour

    def quantile(self, field: str, q: float, key: str) -> tuple[float, int]:
        """(q-quantile of `field` over the peers of `key`, how many peers)."""
        f = self.FIELDS.index(field)
        s = self.sorted[f]
        slot = self.slots.get(key)
        skip = int(self.rank[f, slot]) if slot is not None else -1
        n = len(s) - (skip >= 0)
        if n <= 0:
            return 0.0, 0

        def at(k: int) -> float:
            return float(s[k + 1 if 0 <= skip <= k else k])

        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return at(lo) + (at(hi) - at(lo)) * (pos - lo), n

    def state(self) -> tuple[list[list[Any]], dict[str, Array]]:
        """(keys with their slots in LRU order, arrays): what a snapshot keeps."""
        keys = [[k, s] for k, s in self.slots.items()]
        return keys, {
            "values": self.values, "hour": self.hour, "rank": self.rank,
            "sorted0": self.sorted[0], "sorted1": self.sorted[1],
            "at": np.array([self.pending, self.sorted_hour], np.int64),
        }

    def load(self, keys: list[list[Any]], state: Mapping[str, Array]) -> None:
        values, hour, rank = (np.asarray(state[k]) for k in ("values", "hour", "rank"))
        sorted_ = [np.asarray(state[f"sorted{f}"], np.float64) for f in range(2)]
        at = np.asarray(state["at"])
        slots: OrderedDict[str, int] = OrderedDict()
        for key, slot in keys:
            if not (isinstance(key, str) and isinstance(slot, int) and 0 <= slot < self.capacity):
                raise _bad_state("peer table entry")
            slots[key] = slot
        if (values.shape != self.values.shape or hour.shape != self.hour.shape
                or rank.shape != self.rank.shape or at.shape != (2,)
                or len(slots) > self.capacity or sorted(slots.values()) != list(range(len(slots)))
                or any(s.ndim != 1 or len(s) > self.capacity for s in sorted_)
                or any(r.min() < -1 or r.max() >= len(s)
                       for r, s in zip(rank, sorted_, strict=True))):
            raise _bad_state("peer table does not fit its capacity")
        self.slots, self.sorted = slots, sorted_
        self.values = values.astype(np.float64)
        self.hour, self.rank = hour.astype(np.int64), rank.astype(np.int64)
        self.pending, self.sorted_hour = int(at[0]), int(at[1])


class Detector(ABC):
    """One signal of extraction for one caller; `observe` updates, `score` reads."""

    name: str = "detector"

    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        """The detector for caller `key`, using what its table's detectors share."""
        return cls(summary)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        """Take standardized rows [n, d] and the model's probabilities [n, k] at unix time `now`."""
        for i in range(len(features)):
            self._one(features[i], proba[i])

    def _one(self, z: Array, p: Array) -> None:
        """Take one row; detectors that override `observe` need not."""
        raise NotImplementedError

    @abstractmethod
    def score(self) -> Reading: ...

    @abstractmethod
    def rings(self) -> dict[str, Ring]:
        """Every ring of this detector by a stable name: its state and its memory."""

    def state(self) -> dict[str, Array]:
        """Everything `score` depends on, as named arrays (a snapshot's part for this caller)."""
        out: dict[str, Array] = {}
        for name, ring in self.rings().items():
            out.update(ring.state(name))
        return out

    def load(self, state: Mapping[str, Array]) -> None:
        """Take back what `state` gave; raises ConfigurationError when it does not fit."""
        for name, ring in self.rings().items():
            ring.load(name, state)

    @property
    def nbytes(self) -> int:
        """Bytes of per-caller state: constant once the buffers are full."""
        return sum(r.nbytes for r in self.rings().values())


def _shapiro_scipy(d: Array) -> float:
    from scipy.stats import shapiro

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(shapiro(d).statistic)


@lru_cache(maxsize=64)
def _shapiro_coefficients(n: int) -> Array:
    """Royston's (AS R94) Shapiro-Wilk coefficients, the ones scipy's `shapiro` uses (n > 5)."""
    from scipy.stats import norm

    m = norm.ppf((np.arange(1, n + 1) - 0.375) / (n + 0.25))
    mm = float(m @ m)
    u = 1.0 / math.sqrt(n)
    c = m / math.sqrt(mm)
    an = c[-1] + np.polyval([-2.706056, 4.434685, -2.071190, -0.147981, 0.221157, 0.0], u)
    an1 = c[-2] + np.polyval([-3.582633, 5.682633, -1.752461, -0.293762, 0.042981, 0.0], u)
    phi = (mm - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * an**2 - 2 * an1**2)
    a: Array = m / math.sqrt(phi)
    a[-1], a[-2], a[0], a[1] = an, an1, -an, -an1
    a.setflags(write=False)
    return a


class DistanceNormality(Detector):
    """PRADA: Shapiro-Wilk on the minimum distances to earlier same-class queries.

    W is computed here from Royston's coefficients (cached per sample size) rather than by
    `scipy.stats.shapiro`, which would cost about ten times the rest of an observe; the two
    agree to 1e-9. W is recomputed only after `every` new distances (and cached in the state):
    a verdict at most `every - 1` distances late, for a cheaper common observe.
    """

    name = "prada"

    #: W this far below the benign floor scores 1.
    SPREAD = 0.12

    def __init__(self, summary: Summary, *, per_class: int = 64, window: int = 128,
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
                  replays: int = 8, slack: float = 0.02) -> float:
        """PRADA's threshold delta: the lowest W over replays of benign rows, less a slack.

        Natural data is not exactly normal in this test either (Juuti et al. set delta per
        data set for that reason), so the benign floor is measured, not assumed.
        """
        rng = np.random.default_rng(seed)
        lowest = 1.0
        for _ in range(replays):
            det = cls(summary)
            for i in rng.permutation(len(z)):
                det._one(z[i], proba[i])
                d = det.dmin.view()
                if len(d) >= det.min_n and np.ptp(d) > 1e-12:
                    lowest = min(lowest, det._w(d))
        return lowest - slack

    @staticmethod
    def _w(d: Array) -> float:
        """Shapiro-Wilk W; 1.0 (nothing to test) when the distances are all equal."""
        n = len(d)
        if n < 6:
            return _shapiro_scipy(d) if np.ptp(d) > 1e-12 else 1.0
        x = np.sort(d)
        if x[-1] - x[0] <= 1e-12:
            return 1.0
        centred = x - x.mean()
        return float((_shapiro_coefficients(n) @ x) ** 2 / (centred @ centred))

    def _one(self, z: Array, p: Array) -> None:
        ring = self.seen[int(p.argmax())]
        if ring.count:
            d = math.sqrt(ring.nearest(z))
            if d <= EXACT:  # a repeat teaches nothing new; it would only skew the test
                return
            self.dmin.push(d)
            self.fresh += 1
        ring.push(z)

    def score(self) -> Reading:
        d = self.dmin.view()
        if len(d) < self.min_n:
            return Reading(0.0, f"{len(d)} distances, too few to test")
        if math.isnan(self.w) or self.fresh >= self.every:
            self.w = self._w(d)
            self.fresh = 0
        w = self.w
        s = min(1.0, max(0.0, (self.w_benign - w) / (self.w_benign - self.w_attack)))
        return Reading(s, f"Shapiro-Wilk W={w:.3f} on {len(d)} min distances "
                          f"(benign floor {self.w_benign:.3f})")

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


class _ShareDetector(Detector):
    """A windowed share of flagged queries against the benign share."""

    base: float = 0.01
    what: str = "flagged"

    def __init__(self, summary: Summary, *, window: int = 200, min_n: int = 20) -> None:
        super().__init__(summary)
        self.flags = Ring(window, dtype=np.bool_)
        self.min_n = min_n
        self.hits = 0  # flags set in the window, kept as they come and go

    def _flag(self, flag: bool) -> None:
        if self.flags.count == self.flags.size:
            self.hits -= bool(self.flags.oldest())
        self.flags.push(flag)
        self.hits += flag

    def score(self) -> Reading:
        n, hits = self.flags.count, self.hits
        if n < self.min_n:
            return Reading(0.0, f"{n} queries, too few")
        z = share_excess(hits, n, self.base)
        return Reading(ramp(z), f"{hits}/{n} {self.what} (benign {self.base:.1%}), z={z:.1f}")

    def rings(self) -> dict[str, Ring]:
        return {"flags": self.flags}

    def load(self, state: Mapping[str, Array]) -> None:
        super().load(state)
        self.hits = int(self.flags.view().sum())


class BoundaryProbing(_ShareDetector):
    """Share of queries with a top-1 margin below the summary's cut."""

    name = "boundary"
    what = "near the boundary"

    def __init__(self, summary: Summary, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.base = max(summary.boundary_share, 0.02)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        for near in (top1_margin(proba) < self.summary.margin_cut).tolist():
            self._flag(near)


class Cells:
    """Which k-means cell each row falls in, shared by a model's detectors.

    It remembers the last batch asked about, so the detectors that need cells (and a tenant's
    after its principal's) pay for one lookup per observe.
    """

    def __init__(self, summary: Summary) -> None:
        self.centroids = summary.centroids
        self.norms: Array = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self._last: tuple[tuple[int, ...], bytes] = ((), b"")
        self._answer: tuple[Array, Array] = (np.zeros(0, np.intp), np.zeros(0))

    def of(self, z: Array) -> tuple[Array, Array]:
        """(nearest cell, squared distance to its centroid) per standardized row."""
        key = (z.shape, z.tobytes())
        if key != self._last:
            cell = (self.norms - 2.0 * (z @ self.centroids.T)).argmin(axis=1)
            diff = z - self.centroids[cell]
            self._answer, self._last = (cell, np.einsum("ij,ij->i", diff, diff)), key
        return self._answer


@dataclass(frozen=True)
class Shared:
    """What the detectors of one table of callers share: peer statistics and the cell lookup."""

    peers: PeerStats
    cells: Cells


class OutOfDistribution(_ShareDetector):
    """Share of queries farther from every k-means centroid than 99% of the data."""

    name = "ood"
    what = "out of distribution"
    base = 0.02  # 1% by construction, doubled for data drift between fit and use

    def __init__(self, summary: Summary, *, cells: Cells | None = None, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.cells = cells or Cells(summary)

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        _, d2 = self.cells.of(features)
        for far in (np.sqrt(d2) > self.summary.ood_radius).tolist():
            self._flag(far)


class NearDuplicates(_ShareDetector):
    """Share of queries within `dup_radius` of one of the caller's last `memory` queries.

    Exact repeats do not count: re-sending a row reveals nothing new to a thief, and benign
    clients retry. Near-but-different rows are what perturbation-based searches send.
    """

    name = "duplicates"
    what = "near-duplicates"
    base = 0.02

    def __init__(self, summary: Summary, *, memory: int = 256, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.recent = RowRing(memory, summary.n_features)

    def _one(self, z: Array, p: Array) -> None:
        d2 = self.recent.nearest(z)
        # an exact repeat (a retry, a cache miss) tells a thief nothing; a small step does
        self._flag(EXACT**2 < d2 < self.summary.dup_radius**2)
        self.recent.push(z)

    def rings(self) -> dict[str, Ring]:
        return {**super().rings(), "recent": self.recent}


class _Distinct:
    """How many distinct values a ring of small ints holds, kept as values come and go."""

    def __init__(self, ring: Ring, values: int) -> None:
        self.ring, self.counts, self.distinct = ring, [0] * values, 0

    def push(self, value: int) -> None:
        if self.ring.count == self.ring.size:
            old = int(self.ring.oldest())
            self.counts[old] -= 1
            self.distinct -= self.counts[old] == 0
        self.ring.push(value)
        self.counts[value] += 1
        self.distinct += self.counts[value] == 1

    def recount(self, values: int) -> None:
        held = self.ring.view()
        if len(held) and not (held.min() >= 0 and held.max() < values):
            raise _bad_state("coverage value out of range")
        self.counts = np.bincount(held, minlength=values).tolist()
        self.distinct = sum(c > 0 for c in self.counts)


class Coverage(Detector):
    """Distinct k-means cells and classes in the last window vs iid draws from the data."""

    name = "coverage"

    def __init__(self, summary: Summary, *, window: int | None = None,
                 cells: Cells | None = None) -> None:
        super().__init__(summary)
        self.cell_of = cells or Cells(summary)
        n_cells, k = len(summary.cell_freq), summary.n_classes
        self.cells = Ring(window or n_cells, dtype=np.int32)
        self.classes = Ring(window or max(k, 2), dtype=np.int32)
        self.distinct = {"cells": _Distinct(self.cells, n_cells),
                         "classes": _Distinct(self.classes, k)}
        self.expect = {
            "cells": expected_distinct(summary.cell_freq, self.cells.size),
            "classes": expected_distinct(summary.class_freq, self.classes.size),
        }

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        cells, _ = self.cell_of.of(features)
        for cell, label in zip(cells.tolist(), proba.argmax(axis=1).tolist(), strict=True):
            self.distinct["cells"].push(cell)
            self.distinct["classes"].push(label)

    def score(self) -> Reading:
        best, why = 0.0, "window not full"
        for label, ring in (("cells", self.cells), ("classes", self.classes)):
            if ring.count < ring.size:
                continue
            seen = self.distinct[label].distinct
            mean, sd = self.expect[label]
            z = (seen - mean) / sd
            if ramp(z) >= best:
                best = ramp(z)
                why = f"{seen} distinct {label} in {ring.size} (benign {mean:.1f}±{sd:.1f})"
        return Reading(best, why)

    def rings(self) -> dict[str, Ring]:
        return {"cells": self.cells, "classes": self.classes}

    def load(self, state: Mapping[str, Array]) -> None:
        super().load(state)
        self.distinct["cells"].recount(len(self.summary.cell_freq))
        self.distinct["classes"].recount(self.summary.n_classes)


class VolumeVelocity(Detector):
    """Volume and velocity against the caller's own history and its peers'.

    Heavy and bursty use is common and benign (batch scoring, nightly jobs), and a patient
    thief looks like anyone, so volume is weak evidence and scores gently: at most `GENTLE`
    (0.2), enough to add to other detectors' evidence through the noisy-OR, not enough to flag
    a caller alone. The larger of two signals counts:

    - velocity: the last 10 minutes' rate against the caller's own rate before them (5x to 50x
      ramps from 0 to 1) and against its peers' busiest hour (1x to 4x); GENTLE times the
      smaller ramp. Needs an hour of the caller's own history and `min_peers` peers.
    - volume: queries in the last 48 hours against the peers' 99th percentile, 2x to 20x ramps
      to GENTLE. Only the extreme flags alone: beyond `EXTREME` (20x) the peers' 99th
      percentile, with at least `min_peers` peers and `min_volume` queries, scores from 0.5
      up to 1 at 100x.

    State: per-minute counts for the last hour and per-hour counts for the last 48, indexed by
    time, so a caller idle for a day costs nothing to catch up; under a kilobyte whatever the
    volume. A clock that goes backwards (replicas' clocks differ) counts in the newest bucket.
    """

    name = "volume"
    GENTLE, EXTREME = 0.2, 20.0
    MINUTES, HOURS, RECENT = 60, PeerStats.HOURS, 10

    def __init__(self, summary: Summary, *, peers: PeerStats | None = None, key: str = "",
                 min_peers: int = 5, min_volume: int = 10_000) -> None:
        super().__init__(summary)
        self.peers = peers if peers is not None else PeerStats()
        self.key, self.min_peers, self.min_volume = key, min_peers, min_volume
        # plain lists: a few int updates per observe cost less than numpy's per-call overhead
        self.minutes, self.hours = [0] * self.MINUTES, [0] * self.HOURS
        self.started, self.minute, self.first = False, 0, 0  # minutes since the epoch
        self.volume = 0  # sum of `hours`, kept as buckets fill and expire

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, peers=shared.peers, key=key)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        n = len(features)
        if not n:
            return
        self._advance(int(now // 60))
        hour = self.minute // 60
        self.minutes[self.minute % self.MINUTES] += n
        self.hours[hour % self.HOURS] += n
        self.volume += n
        self.peers.update(self.key, float(self.volume), float(max(self.hours)), hour)

    def _advance(self, minute: int) -> None:
        """Move the clock to `minute`, emptying the buckets it passes."""
        if not self.started:
            self.started, self.minute, self.first = True, minute, minute
            return
        if minute <= self.minute:
            return
        for m in range(self.minute + 1, min(minute, self.minute + self.MINUTES) + 1):
            self.minutes[m % self.MINUTES] = 0
        old, new = self.minute // 60, minute // 60
        for h in range(old + 1, min(new, old + self.HOURS) + 1):
            self.volume -= self.hours[h % self.HOURS]
            self.hours[h % self.HOURS] = 0
        self.minute = minute

    def score(self) -> Reading:
        if not self.started:
            return Reading(0.0, "no queries yet")
        v99, peers = self.peers.quantile("volume", 0.99, self.key)
        if peers < self.min_peers:
            return Reading(0.0, f"{self.volume} queries in {self.HOURS} h; "
                                f"{peers} peers, too few to compare")
        ratio = self.volume / max(v99, 1.0)
        best = self.GENTLE * log_ramp(ratio, 2.0, self.EXTREME)
        if ratio > self.EXTREME and self.volume >= self.min_volume:
            best = 0.5 + 0.5 * log_ramp(ratio, self.EXTREME, 5.0 * self.EXTREME)
        why = (f"{self.volume} queries in {self.HOURS} h, {ratio:.1f}x the 99th percentile "
               f"of {peers} peers")
        history = min(self.minute - self.first, self.HOURS * 60) - self.RECENT
        last = self.minute % self.MINUTES + 1  # the last RECENT buckets, wrapping around
        recent = sum(self.minutes[max(0, last - self.RECENT):last]) + sum(
            self.minutes[self.MINUTES + min(0, last - self.RECENT):])
        if history >= 60 and recent:
            busiest, _ = self.peers.quantile("busiest", 0.99, self.key)
            own = max((self.volume - recent) / history, 0.1)  # queries a minute before
            to_own = recent / self.RECENT / own
            to_peers = recent * (60 / self.RECENT) / max(busiest, 1.0)
            fast = self.GENTLE * min(log_ramp(to_own, 5.0, 50.0), log_ramp(to_peers, 1.0, 4.0))
            if fast > best:
                best = fast
                why = (f"{recent} queries in {self.RECENT} min, {to_own:.0f}x its own rate and "
                       f"{to_peers:.1f}x the busiest hour of {peers} peers")
        return Reading(best, why)

    def rings(self) -> dict[str, Ring]:
        return {}

    def state(self) -> dict[str, Array]:
        clock = np.array([self.started, self.minute, self.first], np.int64)
        return {"minutes": np.array(self.minutes, np.int64),
                "hours": np.array(self.hours, np.int64), "clock": clock}

    def load(self, state: Mapping[str, Array]) -> None:
        minutes, hours, clock = (np.asarray(state[k]) for k in ("minutes", "hours", "clock"))
        if (minutes.shape != (self.MINUTES,) or hours.shape != (self.HOURS,)
                or clock.shape != (3,) or minutes.dtype.kind not in "iu"
                or hours.dtype.kind not in "iu" or (minutes < 0).any() or (hours < 0).any()):
            raise _bad_state("volume counts")
        self.minutes, self.hours = minutes.tolist(), hours.tolist()
        self.started, self.minute, self.first = bool(clock[0]), int(clock[1]), int(clock[2])
        self.volume = sum(self.hours)

    @property
    def nbytes(self) -> int:
        """As stored in a snapshot (the lists hold small ints of 8 bytes' range)."""
        return 8 * (self.MINUTES + self.HOURS + 3)


DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (DistanceNormality, BoundaryProbing, NearDuplicates, OutOfDistribution, Coverage,
                VolumeVelocity)
}
