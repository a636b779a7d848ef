"""What every extraction detector shares: the reading it gives, the ramps that turn a
statistic into a score, the base class, and the exact-repeat filter the monitor runs first.

A score ramps between two z-values of a statistic against the benign expectation (`ramp`),
so a threshold means the same for every detector; `Repeats` drops a caller's unchanged
re-sends before every detector but volume (a retry teaches a thief nothing).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Self

import numpy as np

from .facts import Rows, digest
from .rings import START, Ring, _bad_state, capacity
from .summary import Array, Summary

if TYPE_CHECKING:
    from .shares import Shared

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
        # a ring; bytes, as one search reads them; grown on demand as `Ring` is
        self.digests = bytearray()

    def seen(self, row: Array) -> bool:
        """Whether `row` is one of the last `memory` rows; it is remembered either way."""
        return self.seen_digest(digest(row))

    def seen_digest(self, digest: bytes) -> bool:
        """`seen`, given the row's digest (`facts.digest`)."""
        held, end = self.digests, 8 * self.count
        i = held.find(digest, 0, end)
        while i > 0 and i % 8:  # only a match at a digest's start is one
            i = held.find(digest, i + 1, end)
        if 8 * self.head == len(held):  # storage full before the first wrap: double it
            held.extend(bytes(min(max(2 * len(held), 8 * START), 8 * self.size) - len(held)))
        held[8 * self.head:8 * self.head + 8] = digest
        self.head = (self.head + 1) % self.size
        self.count = min(self.count + 1, self.size)
        return i >= 0

    def fresh(self, x: Array) -> Array:
        """A mask of the rows of `x` [n, d] not among the last `memory` rows (nor earlier in x)."""
        return np.array([not self.seen(row) for row in x], np.bool_)

    def state(self) -> dict[str, Array]:
        """The digests held (not the empty slots) and (count, head)."""
        return {"digests": np.frombuffer(self.digests, "<i8", self.count).copy(),
                "digests.at": np.array([self.count, self.head], np.int64)}

    def load(self, state: Mapping[str, Array]) -> None:
        """Take back what `state` gave: the digests held, or (snapshots before version 5)
        all `memory` slots."""
        data, at = np.asarray(state["digests"]), np.asarray(state["digests.at"])
        if at.shape != (2,) or not (0 <= at[0] <= self.size and 0 <= at[1] < self.size):
            raise _bad_state(f"repeat digests position {at.tolist()}")
        count, head = int(at[0]), int(at[1])
        if (data.shape not in ((self.size,), (count,)) or data.dtype.kind != "i"
                or data.itemsize != 8 or (len(data) != self.size and head != count % self.size)):
            raise _bad_state(f"repeat digests are {data.dtype}{list(data.shape)}")
        cap = capacity(self.size, count, head)
        self.digests = bytearray(data[:cap].astype("<i8").tobytes())
        self.digests.extend(bytes(8 * cap - len(self.digests)))
        self.count, self.head = count, head

    @property
    def nbytes(self) -> int:
        return len(self.digests)



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
