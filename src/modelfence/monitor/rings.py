"""Bounded ring buffers of scalars and of rows: a caller's whole memory, grown on demand.

Scalars live in `array.array` (compact, and fast to set one at a time from Python); rows
in float32 numpy arrays with their half squared norms cached, so that the nearest held row
to a new one is one matrix-vector product (`nearest`). Every ring's state is two named
arrays (`state`: the values held, not the empty slots), restored with `load`, so monitor
snapshots need no pickle.
"""

from __future__ import annotations

import array
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigurationError

Array = np.ndarray[Any, Any]
#: Standardized distances at or below this are the same row sent again.
EXACT = 1e-9
#: How rows are kept: float32 halves a caller's memory against float64.
ROW = np.float32


def nearest(rows: Array, half: Array, z: Array, zz: float) -> tuple[int, float]:
    """(index, squared distance) of the row of `rows` nearest `z`, given `zz` = |z|^2.

    |r - z|^2 = |z|^2 - 2 (r.z - |r|^2/2): one float32 matrix-vector product against the
    rows' cached half squared norms finds the candidates. Its rounding depends on the CPU's
    BLAS kernels, so the winner's distance is measured again exactly (`_exact`), and when
    other rows lie within float32 error of it, each is measured so and the nearest wins, the
    lowest index on a tie: replicas on different CPUs pick the same row and the
    same distance, and an exact repeat measures 0.
    """
    score = rows @ z - half
    j = int(score.argmax())
    best = float(score[j])
    floor = best - 1e-4 * (zz + abs(best) + 1.0)
    score[j] = -math.inf
    zl = z.tolist()
    if float(score[int(score.argmax())]) < floor:  # one clear winner: the usual case
        return j, _exact(rows[j].tolist(), zl)
    found, d2 = -1, math.inf
    for i in sorted((j, *np.flatnonzero(score >= floor).tolist())):
        got = _exact(rows[i].tolist(), zl)
        if got < d2:
            found, d2 = i, got
    return found, d2


def _exact(a: list[float], b: list[float]) -> float:
    """|a - b|^2 rounded once (`math.fsum`), whatever the CPU."""
    return math.fsum([(x - y) * (x - y) for x, y in zip(a, b, strict=True)])


def _bad_state(what: str) -> ConfigurationError:
    return ConfigurationError(f"monitor state does not fit this detector: {what}")


#: array.array type codes for the scalar rings' numpy dtypes.
_CODES = {np.dtype(np.bool_): "B", np.dtype(np.int32): "i", np.dtype(np.float64): "d"}
#: Slots a ring takes at its first value (none before): most callers send a few queries,
#: so storage grows on demand (doubling, up to the ring's size) rather than being taken
#: whole at the first query; a detector's rings a caller never fills cost nothing.
START = 8


def capacity(size: int, count: int, head: int) -> int:
    """Slots to hold `count` values of a ring of `size` whose next slot is `head`: before
    the first wrap (head == count) none or a power of two from `START`, after it the whole
    ring."""
    if count >= size or head != count:
        return size
    if not count:
        return 0
    cap = START
    while cap < count:
        cap *= 2
    return min(cap, size)


class Ring:
    """A ring buffer of at most `size` scalars (`RowRing`: of rows): a detector's memory.

    Scalars live in an `array.array`, as compact as numpy's and several times faster to set
    or read one at a time from Python; `array` is a numpy view of the same memory. Storage
    is taken at the first push (`START` slots) and doubles when a push finds it full
    (`grow`), until it holds `size`: before the first wrap the next slot is the count of
    values, so growing is one copy, and a caller that sends three queries holds eight
    slots, not `size`. Code that inlines `push` checks `head == cap` first, as `push` does.
    """

    def __init__(self, size: int, dtype: Any = np.float64) -> None:
        self.dtype = np.dtype(dtype)
        self.size, self.count, self.head = size, 0, 0
        self._allot(0)

    def _allot(self, cap: int) -> None:
        """Storage of `cap` slots (zeros), the held values copied over."""
        data = array.array(_CODES[self.dtype], bytes(self.dtype.itemsize * cap))
        if self.count:
            data[:self.count] = self.data[:self.count]
        self.data: Any = data
        self.array: Array = np.frombuffer(data, self.dtype)
        self.cap = cap

    def grow(self) -> None:
        """Double the storage (`START` slots at first, at most `size`): what a push does
        when `head == cap`."""
        self._allot(min(max(2 * self.cap, START), self.size))

    def push(self, value: Any) -> None:
        if self.head == self.cap:
            self.grow()
        self.data[self.head] = value
        self.head = (self.head + 1) % self.size
        if self.count < self.size:
            self.count += 1

    def view(self) -> Array:
        """The filled part (order is not kept; no detector needs it)."""
        return self.array[: self.count]

    def state(self, name: str) -> dict[str, Array]:
        """The values held (a copy of the first `count` slots) and (count, head)."""
        return {name: self.array[: self.count].copy(),
                f"{name}.at": np.array([self.count, self.head], np.int64)}

    def load(self, name: str, state: Mapping[str, Array]) -> None:
        """Take back what `state` gave: the values held, or (snapshots before version 5)
        the whole ring of `size` slots."""
        data, at = self._check(name, state)
        count, head = int(at[0]), int(at[1])
        self.count, self.head = 0, 0
        self._allot(capacity(self.size, count, head))
        n = min(len(data), self.cap)  # a whole ring's empty tail is not kept
        self.array[:n] = data[:n]
        self.count, self.head = count, head

    def _check(self, name: str, state: Mapping[str, Array]) -> tuple[Array, Array]:
        data, at = np.asarray(state[name]), np.asarray(state[f"{name}.at"])
        shape = (self.size, *self._row_shape())
        if at.shape != (2,) or not (0 <= at[0] <= self.size and 0 <= at[1] < self.size):
            raise _bad_state(f"{name} position {at.tolist()}")
        count, head = int(at[0]), int(at[1])
        held = (count, *shape[1:])
        if data.dtype != self.dtype or data.shape not in (shape, held) or (
                data.shape != shape and head != count % self.size):
            raise _bad_state(f"{name} is {data.dtype}{list(data.shape)}, "
                             f"expected {self.dtype}{list(held)}")
        return data, at

    def _row_shape(self) -> tuple[int, ...]:
        return ()

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


class RowRing(Ring):
    """A ring of float32 rows that keeps half of each row's squared norm, for `nearest`."""

    def __init__(self, size: int, width: int) -> None:
        self.dtype, self.width = np.dtype(ROW), width
        self.size, self.count, self.head = size, 0, 0
        self._allot(0)

    def _allot(self, cap: int) -> None:
        data, half = np.zeros((cap, self.width), ROW), np.zeros(cap, ROW)
        if self.count:
            data[:self.count] = self.data[:self.count]
            half[:self.count] = self.half[:self.count]
        self.data = self.array = data
        self.half: Array = half
        self.cap = cap

    def _row_shape(self) -> tuple[int, ...]:
        return (self.width,)

    def push(self, value: Any, zz: float | None = None) -> None:
        """Add a row (float32, as the monitor sends), given its squared norm `zz` if known."""
        head = self.head
        if head == self.cap:
            self.grow()
        self.data[head] = value
        self.half[head] = 0.5 * (float(value @ value) if zz is None else zz)
        self.head = (head + 1) % self.size
        if self.count < self.size:
            self.count += 1

    def nearest(self, z: Array, zz: float) -> float:
        """Squared distance from `z` (float32), with |z|^2 = `zz`, to the nearest row held
        (inf when empty)."""
        return self.nearest_at(z, zz)[1]

    def nearest_at(self, z: Array, zz: float) -> tuple[int, float]:
        """(slot, squared distance) of the nearest row held ((-1, inf) when empty)."""
        count = self.count
        if count == self.size:
            return nearest(self.data, self.half, z, zz)
        if not count:
            return -1, math.inf
        return nearest(self.data[:count], self.half[:count], z, zz)

    def load(self, name: str, state: Mapping[str, Array]) -> None:
        super().load(name, state)
        self.half = 0.5 * np.einsum("ij,ij->i", self.data, self.data)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.half.nbytes)
