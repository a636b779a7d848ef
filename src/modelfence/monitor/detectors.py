"""Extraction detectors: each watches one caller's queries and says how unlike use they look.

Every detector sees rows already standardized by the model's `Summary` (float32) and the
model's probabilities for them, keeps fixed-size numpy ring buffers (so a caller with a
million queries costs what one with a few hundred does), and scores in [0, 1], where 0 is "as
benign traffic looks" and 1 is "certainly not use". Scores ramp between two z-values of a
statistic against the benign expectation, so a threshold means the same for every detector.

A row the caller sent moments ago, unchanged, teaches a thief nothing, while benign clients
retry and refresh all the time; the monitor drops such repeats (`Repeats`) before every
detector but `VolumeVelocity`, which counts load. So a rare row sent three times counts once.

- `DistanceNormality`: PRADA (Juuti et al., "PRADA: Protecting against DNN Model Stealing
  Attacks", EuroS&P 2019). Natural queries' distances to a caller's earlier queries of the
  same predicted class are roughly normal; synthetic ones (perturbations of few seeds, random
  points) are not. A Shapiro-Wilk W below the benign range raises the score.
- `BoundaryProbing`: many extraction attacks (Tramèr et al. 2016 line search; active
  learning, Chandrasekaran et al. 2020; Jacobian augmentation, Papernot et al. 2017) ask
  where the model is unsure: margins low for the class the model answers.
- `NearDuplicates`: stateful detection of black-box attacks (Chen, Carlini and Wagner,
  "Stateful Detection of Black-Box Adversarial Attacks", 2020): many queries closer to recent
  ones than natural rows of the same class come.
- `OutOfDistribution`: synthetic queries fall outside the data (uniform random rows, pushed
  augmentations); the share beyond the data's own 99th-percentile radius is compared with 1%.
- `Coverage`: a thief covers every region and class faster than a user drawing from the data
  distribution would; distinct cells in the last window vs the iid expectation.
- `VolumeVelocity`: how much and how fast, against the caller's own history and its peers
  (the model's other callers, through a shared `PeerStats`). Weak evidence on its own.

A detector's whole state is `state()`: named numpy arrays, restored with `load`, so a
monitor can be snapshotted without pickle. Rows are kept as float32 (half the memory; a
distance's seventh digit decides nothing here). A one-row observe is what the request path
pays for, and on it numpy's per-call overhead, not arithmetic, is the cost: a nearest-row
search is one matrix-vector product against cached row norms (`nearest`), labels and margins
are read in plain Python, what the detectors read of a row (cell, naturalness, answer, norm)
is computed once per observe for a caller and its tenant (`facts`, through `take`), and a
reading's explanation is only formatted when someone reads it.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Self

import numpy as np

from . import null
from .facts import Cells, Judge, Rows, answers, digest
from .rings import EXACT, ROW, Ring, RowRing, _bad_state
from .summary import Array, Summary, expected_distinct

#: z-values between which a score ramps from 0 to 1.
Z_LOW, Z_HIGH = 4.0, 7.0


class Reading:
    """One detector's verdict: a score in [0, 1] and why, in a few words.

    `why` may be given as a function of values already taken (never of live state), which is
    called the first time it is read: on the request path most readings are never read, and
    formatting six explanations would cost as much as the detectors' arithmetic.
    """

    __slots__ = ("_why", "score")

    def __init__(self, score: float, why: str | Callable[[], str]) -> None:
        self.score = score
        self._why = why

    @property
    def why(self) -> str:
        if not isinstance(self._why, str):
            self._why = self._why()
        return self._why

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Reading) and self.score == other.score
                and self.why == other.why)

    def __hash__(self) -> int:
        return hash((self.score, self.why))

    def __repr__(self) -> str:
        return f"Reading(score={self.score!r}, why={self.why!r})"


def ramp(z: float, low: float = Z_LOW, high: float = Z_HIGH) -> float:
    v = (z - low) / (high - low)
    v = v if v > 0.0 else 0.0  # max(0.0, v): NaN and -0.0 give 0.0, as there
    return float(v if v < 1.0 else 1.0)  # min(1.0, v)


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


class Repeats:
    """Which of a caller's rows repeat one of its last `memory` rows exactly.

    Kept per caller by the monitor, which shows detectors only the new rows: a re-sent row
    reveals nothing new to a thief, and counting a rare row each time a benign client retries
    it would make a repeating user look like a prober. A row is its raw bytes (not the
    standardized float32 row, which would merge rows that differ in the last digits), kept as
    an 8-byte BLAKE2 digest: the same in every process (unlike `hash`, for snapshots), and
    passing a new row off as a repeat would cost a thief some 2^32 hashes per row.
    """

    def __init__(self, memory: int = 256) -> None:
        self.size, self.count, self.head = memory, 0, 0
        self.digests = bytearray(8 * memory)  # a ring; bytes, as one search reads them

    def seen(self, row: Array) -> bool:
        """Whether `row` is one of the last `memory` rows; it is remembered either way."""
        return self.seen_digest(digest(row))

    def seen_digest(self, digest: bytes) -> bool:
        """`seen`, given the row's digest (`facts.digest`)."""
        held, end = self.digests, 8 * self.count
        i = held.find(digest, 0, end)
        while i > 0 and i % 8:  # only a match at a digest's start is one
            i = held.find(digest, i + 1, end)
        held[8 * self.head:8 * self.head + 8] = digest
        self.head = (self.head + 1) % self.size
        self.count = min(self.count + 1, self.size)
        return i >= 0

    def fresh(self, x: Array) -> Array:
        """A mask of the rows of `x` [n, d] not among the last `memory` rows (nor earlier in x)."""
        return np.array([not self.seen(row) for row in x], np.bool_)

    def state(self) -> dict[str, Array]:
        return {"digests": np.frombuffer(bytes(self.digests), "<i8").copy(),
                "digests.at": np.array([self.count, self.head], np.int64)}

    def load(self, state: Mapping[str, Array]) -> None:
        data, at = np.asarray(state["digests"]), np.asarray(state["digests.at"])
        if data.shape != (self.size,) or data.dtype.kind != "i" or data.itemsize != 8:
            raise _bad_state(f"repeat digests are {data.dtype}{list(data.shape)}")
        if at.shape != (2,) or not (0 <= at[0] <= self.size and 0 <= at[1] < self.size):
            raise _bad_state(f"repeat digests position {at.tolist()}")
        self.digests = bytearray(data.astype("<i8").tobytes())
        self.count, self.head = int(at[0]), int(at[1])

    @property
    def nbytes(self) -> int:
        return len(self.digests)


class PeerStats:
    """What a model's callers do, for "more than its peers": one bounded table per model.

    Each caller reports its volume over the last `HOURS` hours and its busiest hour in them as
    it is observed. The table keeps the `capacity` most recent callers (LRU). Quantiles are read
    from a sorted view rebuilt, when read, if the hour has turned or after `resort_every`
    reports (after as many reports as there are callers, while they are fewer), so a read is
    O(1) and a rebuild (two sorts of at most `capacity` values) falls on under 1% of observes;
    a caller with too few peers to compare reads nothing (`callers`) and rebuilds nothing. A
    caller's own entry is left out of its comparison (by its rank in the sorted view): a thief
    is not its own peer. Values are as of each caller's last query, a bias towards the busy
    that only raises the bar.
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
        self.latest = -1  # the latest hour reported

    @property
    def callers(self) -> int:
        """Callers in the table (live or not): an upper bound on anyone's peers, plus one."""
        return len(self.slots)

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
        self.latest = max(self.latest, hour)

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
        if self.pending >= min(self.resort_every, len(self.slots)) or (
                self.latest > self.sorted_hour):
            self._resort(max(self.latest, self.sorted_hour))
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
            "at": np.array([self.pending, self.sorted_hour, self.latest], np.int64),
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
                or rank.shape != self.rank.shape or at.shape != (3,)
                or len(slots) > self.capacity or sorted(slots.values()) != list(range(len(slots)))
                or any(s.ndim != 1 or len(s) > self.capacity for s in sorted_)
                or any(r.min() < -1 or r.max() >= len(s)
                       for r, s in zip(rank, sorted_, strict=True))):
            raise _bad_state("peer table does not fit its capacity")
        self.slots, self.sorted = slots, sorted_
        self.values = values.astype(np.float64)
        self.hour, self.rank = hour.astype(np.int64), rank.astype(np.int64)
        self.pending, self.sorted_hour, self.latest = int(at[0]), int(at[1]), int(at[2])


class Detector(ABC):
    """One signal of extraction for one caller; `observe` updates, `score` reads."""

    name: str = "detector"
    #: Whether it sees exact repeats of the caller's recent rows (see `Repeats`).
    sees_repeats: bool = False
    #: Whether it sees the caller's noisy re-sends (`observe_resends`) instead of fresh rows.
    sees_resends: bool = False

    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        """The detector for caller `key`, using what its table's detectors share."""
        return cls(summary)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        """Take standardized rows [n, d] and the model's probabilities [n, k] at unix time `now`.

        The monitor sends float32 rows, without exact repeats unless `sees_repeats`."""
        for i in range(len(features)):
            self._one(features[i], proba[i])

    def observe_raw(self, x: Array, features: Array, proba: Array, now: float) -> None:
        """`observe`, given the raw rows `x` (float64) too: what the monitor calls."""
        self.observe(features, proba, now)

    def observe_resends(self, features: Array, flips: list[bool], now: float) -> None:
        """Take noisy re-sends (standardized rows) and whether each one's answer differs
        from the answer its anchor got; only detectors that `sees_resends` are shown them."""
        raise NotImplementedError

    def take(self, rows: Rows, now: float) -> None:
        """`observe_raw` through what the caller's other detectors (and its tenant's) read
        of the same rows, computed once (`facts`): what the monitor calls."""
        assert rows.x is not None
        self.observe_raw(rows.x, rows.z, rows.p, now)

    def take_resends(self, rows: Rows, flips: list[bool], now: float) -> None:
        """`observe_resends` through shared facts, as `take`."""
        self.observe_resends(rows.z, flips, now)

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

    Two departures from the paper, both for benign users it did not model:

    - W is taken on the distances without their largest `TRIM` share. A natural row unlike the
      rest of its class (a rare style) lies far from everything, and a user who asks about one
      or two classes meets it often enough for that one outlier to drag W below any useful
      floor. What synthesis leaves is an excess of *small* distances (steps from a few seeds,
      Papernot et al. 2017), which trimming the top does not hide.
    - each class keeps only its last `per_class` rows (float32), so memory is bounded; a
      thief's synthetic steps are judged against its recent seeds, which is where they are.

    The benign floor is measured (`calibrate`), on users of every class and of one class. W is
    computed from Royston's coefficients (cached per sample size) rather than by
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
                if resends.seen(zf[i]) is not None:
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
        n = len(d)
        if n < 6:
            return _shapiro_scipy(d) if np.ptp(d) > 1e-12 else 1.0
        x = d if ordered else np.sort(d)
        if x[-1] - x[0] <= 1e-12:
            return 1.0
        total = float(x.sum())
        spread = float(x @ x) - total * total / n  # sum of squares about the mean
        if spread <= 0.0:
            return 1.0
        # the coefficients sum to zero, so a.x = a.(x - mean)
        return float(_shapiro_coefficients(n) @ x) ** 2 / spread

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


class BoundaryProbing(_ShareDetector):
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

    #: The long window: a persistent moderate excess (active learning through a proxy model
    #: picks rows only somewhat nearer the boundary) shows over more rows than the short one.
    LONG, LONG_MIN = 800, 400

    def __init__(self, summary: Summary, *, cells: Cells | None = None, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.cells = cells or Cells(summary)
        self.cuts: list[float] = summary.margin_cuts.tolist()
        self.rates: list[float] = summary.cell_boundary.tolist()
        self.z0 = summary.boundary_z0
        self.z0_long = summary.boundary_z0_long
        self.long = ShareWindow(self.LONG)

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells)

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


class Synthetic(_ShareDetector):
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

    def __init__(self, summary: Summary, *, cells: Cells | None = None,
                 judge: Judge | None = None, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.cells = cells or Cells(summary)
        self.judge = judge or Judge(summary)
        self.rates: list[float] = summary.cell_unnatural.tolist()
        self.z0 = summary.unnatural_z0

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
        push, rates = self.window.push, self.rates
        for flag, cell in zip(rows.unnatural, rows.cells, strict=True):
            push(flag, rates[cell])


class Flips(_ShareDetector):
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

    def __init__(self, summary: Summary, *, cells: Cells | None = None, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.cells = cells or Cells(summary)
        self.rates: list[float] = summary.cell_flip.tolist()
        self.z0 = summary.flip_z0

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        """Fresh rows are not this detector's business."""

    def observe_resends(self, features: Array, flips: list[bool], now: float) -> None:
        self.take_resends(Rows(None, features, np.zeros((len(features), 0)), self.cells),
                          flips, now)

    def take_resends(self, rows: Rows, flips: list[bool], now: float) -> None:
        push, rates = self.window.push, self.rates
        for flip, cell in zip(flips, rows.cells, strict=True):
            push(flip, rates[cell])


class OutOfDistribution(_ShareDetector):
    """Share of queries farther from every k-means centroid than 99% of new natural rows.

    The radius and each cell's expected rate are cross-fitted (`Summary.fit`): a row's
    distance is measured to centroids fitted without it, as a new row's would be, so a small
    fit set (where in-sample distances are short) does not make every caller look far.
    """

    name = "ood"
    what = "out of distribution"
    #: Lowest expected rate of a cell.
    FLOOR = 0.01

    def __init__(self, summary: Summary, *, cells: Cells | None = None, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.cells = cells or Cells(summary)
        self.rates: list[float] = summary.cell_ood.tolist()
        self.z0 = summary.ood_z0

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        self.take(Rows(None, features, proba, self.cells), now)

    def take(self, rows: Rows, now: float) -> None:
        radius2 = self.summary.ood_radius**2
        cells, d2s = rows.where
        push, rates = self.window.push, self.rates
        for cell, d2 in zip(cells, d2s, strict=True):
            push(d2 > radius2, rates[cell])


class _Distinct:
    """How many distinct values a ring of small ints holds, kept as values come and go."""

    def __init__(self, ring: Ring, values: int) -> None:
        self.ring, self.counts, self.distinct = ring, [0] * values, 0

    def push(self, value: int) -> None:
        ring, counts = self.ring, self.counts  # `Ring.push`, inlined: two a row, every caller
        head = ring.head
        if ring.count == ring.size:
            old = int(ring.data[head])
            counts[old] -= 1
            self.distinct -= counts[old] == 0
        else:
            ring.count += 1
        ring.data[head] = value
        ring.head = (head + 1) % ring.size
        counts[value] += 1
        self.distinct += counts[value] == 1

    def recount(self, values: int) -> None:
        held = self.ring.view()
        if len(held) and not (held.min() >= 0 and held.max() < values):
            raise _bad_state("coverage value out of range")
        self.counts = np.bincount(held, minlength=values).tolist()
        self.distinct = sum(c > 0 for c in self.counts)


class Coverage(Detector):
    """Distinct k-means cells and classes in the last window vs iid draws from the data.

    The classes' window holds `CLASS_ROWS` rows per class (at least `MIN_WINDOW`): with one
    row per class, a binary model with a rare class would call every caller who meets both
    classes a prober. A count's sd is at least `MIN_SD` (counts are whole numbers), and the
    score ramps from `Summary.coverage_z0`, beyond the honest callers simulated at fit.
    """

    name = "coverage"
    CLASS_ROWS, MIN_WINDOW, MIN_SD = 4, 16, 0.5

    def __init__(self, summary: Summary, *, window: int | None = None,
                 cells: Cells | None = None) -> None:
        super().__init__(summary)
        self.cell_of = cells or Cells(summary)
        n_cells, k = len(summary.cell_freq), summary.n_classes
        sizes = self.windows(n_cells, k)
        self.cells = Ring(window or sizes[0], dtype=np.int32)
        self.classes = Ring(window or sizes[1], dtype=np.int32)
        self.distinct = {"cells": _Distinct(self.cells, n_cells),
                         "classes": _Distinct(self.classes, k)}
        self.expect = {
            "cells": self.expected(summary.cell_freq, self.cells.size),
            "classes": self.expected(summary.class_freq, self.classes.size),
        }
        self.z0 = summary.coverage_z0
        # what `score` reads of each window, gathered once (loading a state refills the
        # rings and counts in place)
        self._windows = tuple((label, ring, self.distinct[label], self.expect[label])
                              for label, ring in (("cells", self.cells),
                                                  ("classes", self.classes)))

    @classmethod
    def windows(cls, n_cells: int, k: int) -> tuple[int, int]:
        """Window sizes: (cells, classes)."""
        return n_cells, max(cls.CLASS_ROWS * k, cls.MIN_WINDOW)

    @classmethod
    def expected(cls, freq: Array, n: int) -> tuple[float, float]:
        mean, sd = expected_distinct(freq, n)
        return mean, max(sd, cls.MIN_SD)

    @classmethod
    def null(cls, cells: Array, labels: Array, cell_freq: Array, class_freq: Array,
             orders: list[Array]) -> float:
        """Where the score starts: beyond the most distinct cells or classes (in z) any
        honest caller of `orders` showed in a window."""
        sizes = cls.windows(len(cell_freq), len(class_freq))
        top = 0.0
        for values, freq, size in ((cells, cell_freq, sizes[0]), (labels, class_freq, sizes[1])):
            mean, sd = cls.expected(freq, size)
            for order in orders:
                seq = values[order]
                for end in range(size, len(seq) + 1, max(1, size // 4)):
                    seen = len(np.unique(seq[end - size:end]))
                    top = max(top, (seen - mean) / sd)
        return null.start(top, Z_LOW)

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        self.take(Rows(None, features, proba, self.cell_of), now)

    def take(self, rows: Rows, now: float) -> None:
        for cell, label in zip(rows.cells, rows.argmax, strict=True):
            self.distinct["cells"].push(cell)
            self.distinct["classes"].push(label)

    def score(self) -> Reading:
        best, won = 0.0, None
        z0 = self.z0
        for label, ring, distinct, (mean, sd) in self._windows:
            if ring.count < ring.size:
                continue
            seen = distinct.distinct
            z = ramp((seen - mean) / sd, z0, z0 + Z_HIGH - Z_LOW)
            if z >= best:
                best, won = z, (seen, label, ring.size, mean, sd)
        if won is None:
            return Reading(best, "window not full")
        return Reading(best, partial("{} distinct {} in {} (benign {:.1f}±{:.1f})".format,
                                     *won))

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
    sees_repeats = True  # load is load, repeated or not
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
        self.busiest = 0  # max of `hours`, kept likewise (not taken over 48 buckets a query)

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, peers=shared.peers, key=key)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        self.count(len(features), now)

    def take(self, rows: Rows, now: float) -> None:
        self.count(len(rows), now)

    def count(self, n: int, now: float) -> None:
        """`n` queries at unix time `now`."""
        if not n:
            return
        self._advance(int(now // 60))
        hour = self.minute // 60
        self.minutes[self.minute % self.MINUTES] += n
        bucket = hour % self.HOURS
        self.hours[bucket] += n
        self.volume += n
        self.busiest = max(self.busiest, self.hours[bucket])
        self.peers.update(self.key, float(self.volume), float(self.busiest), hour)

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
        if new > old:
            self.busiest = max(self.hours)
        self.minute = minute

    def score(self) -> Reading:
        if not self.started:
            return Reading(0.0, "no queries yet")
        volume, hours = self.volume, self.HOURS
        if self.peers.callers - 1 < self.min_peers:  # too few even if all were live
            few = max(self.peers.callers - 1, 0)
            return Reading(0.0, lambda: f"{volume} queries in {hours} h; {few} peers, too few "
                                        "to compare")
        v99, peers = self.peers.quantile("volume", 0.99, self.key)
        if peers < self.min_peers:
            return Reading(0.0, lambda: f"{volume} queries in {hours} h; {peers} peers, too "
                                        "few to compare")
        ratio = self.volume / max(v99, 1.0)
        best = self.GENTLE * log_ramp(ratio, 2.0, self.EXTREME)
        if ratio > self.EXTREME and self.volume >= self.min_volume:
            best = 0.5 + 0.5 * log_ramp(ratio, self.EXTREME, 5.0 * self.EXTREME)
        why: str | Callable[[], str] = partial(
            "{} queries in {} h, {:.1f}x the 99th percentile of {} peers".format,
            volume, hours, ratio, peers)
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
                       f"{to_peers:.1f}x the busiest hour of {peers} peers")  # rare: eager
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
        self.busiest = max(self.hours)

    @property
    def nbytes(self) -> int:
        """As stored in a snapshot (the lists hold small ints of 8 bytes' range)."""
        return 8 * (self.MINUTES + self.HOURS + 3)


#: Detectors no longer offered, and what to do instead (a configuration naming one fails).
RETIRED = {
    "duplicates": "rows within the model's calibrated re-send radius of a caller's recent "
                  "rows are now re-sends (volume only, never evidence), and unnatural fresh "
                  "rows are what 'synthetic' scores; remove 'duplicates' from "
                  "monitor.detectors (the default list has 'synthetic' instead)",
}

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (DistanceNormality, BoundaryProbing, Synthetic, Flips, OutOfDistribution,
                Coverage, VolumeVelocity)
}
