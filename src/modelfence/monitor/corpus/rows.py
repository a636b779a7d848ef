"""What benign and thief generators share: natural rows, the data's precision, timing.

A generator returns `Drawn`: rows in send order, their send times (unix seconds), the true
label of every natural row (-1 where the row is made up), and, for callers that spread over
several keys or tenants, which key and tenant sent each row. `behaviours.generate` turns the
indices into names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ConfigurationError
from .victims import CorpusWorld

Array = np.ndarray[Any, Any]
Params = Mapping[str, float | str]

#: Simulated time of the first query (2025-06-15 UTC), so timestamps look like real ones.
START = 1_750_000_000.0
#: A script's pace, queries per second, unless a behaviour says otherwise.
SCRIPT_RATE = 5.0
#: A feature whose values need more decimals than this is at full float precision.
MAX_DECIMALS = 6
#: Label of a row that is not a natural row.
UNKNOWN = -1


@dataclass(frozen=True)
class Drawn:
    x: Array  # [n, d]
    t: Array  # [n] unix seconds, non-decreasing
    truth: Array  # [n] true label of natural rows, UNKNOWN for made-up ones
    keys: Array | None = None  # [n] which of the caller's keys sent each row (None: one)
    tenants: Array | None = None  # [n] which tenant each row's key belongs to (None: one)


def num(p: Params, key: str, default: float | None = None) -> float:
    value = p.get(key, default)
    if value is None:
        raise ConfigurationError(f"behaviour parameter {key!r} is missing")
    return float(value)


def text(p: Params, key: str, default: str | None = None) -> str:
    value = p.get(key, default)
    if value is None:
        raise ConfigurationError(f"behaviour parameter {key!r} is missing")
    return str(value)


# rows ------------------------------------------------------------------------------------


def resample(n_rows: int, n: int, rng: np.random.Generator) -> Array:
    """`n` indices into `n_rows` rows in random order; every row once before any twice."""
    if n_rows < 1:
        raise ConfigurationError("no rows to draw from")
    reps = -(-n // n_rows)
    idx: Array = np.concatenate([rng.permutation(n_rows) for _ in range(reps)])[:n]
    return idx


def spread(world: CorpusWorld) -> Array:
    """Each feature's standard deviation in the callers' data (the issue's "spread")."""
    sd: Array = world.pool_x.std(axis=0)
    return sd


def decimals(x: Array) -> Array:
    """Per feature, the decimals its values are recorded with (-1: full float precision)."""
    out = np.full(x.shape[1], UNKNOWN, dtype=np.int64)
    for k in range(MAX_DECIMALS, -1, -1):  # the fewest decimals that hold every value
        scaled = x * 10.0**k
        exact = np.all(np.abs(scaled - np.round(scaled)) < 1e-6 * np.maximum(1, np.abs(scaled)),
                       axis=0)
        out[exact] = k
    return out


def snap(x: Array, dec: Array) -> Array:
    """Rows recorded at the data's precision: features with fixed decimals rounded to them."""
    out = x.copy()
    for k in np.unique(dec[dec >= 0]):
        cols = dec == k
        out[:, cols] = np.round(out[:, cols], int(k))
    return out


def bounds(world: CorpusWorld) -> tuple[Array, Array]:
    return world.pool_x.min(axis=0), world.pool_x.max(axis=0)


def natural(world: CorpusWorld, x: Array) -> Array:
    """`x` as a recorder would keep it: clipped to the data's range, at its precision."""
    lo, hi = bounds(world)
    return snap(np.clip(x, lo, hi), decimals(world.pool_x))


def shift_image(x: Array, side: int, rng: np.random.Generator, pixels: int) -> Array:
    """Each square image moved by 1..`pixels` pixels along a random axis (blank fill)."""
    img = x.reshape(len(x), side, side)
    out = np.zeros_like(img)
    for i in range(len(x)):
        s = int(rng.integers(1, pixels + 1)) * int(rng.choice([-1, 1]))
        axis = 1 + int(rng.integers(0, 2))
        rolled = np.roll(img[i], s, axis=axis - 1)
        blank = slice(0, s) if s > 0 else slice(side + s, side)
        if axis == 1:
            rolled[blank, :] = 0.0
        else:
            rolled[:, blank] = 0.0
        out[i] = rolled
    res: Array = out.reshape(len(x), side * side)
    return res


# times -----------------------------------------------------------------------------------


def poisson_times(rng: np.random.Generator, n: int, rate: float, start: float = START) -> Array:
    """Poisson arrivals at `rate` queries per second."""
    if rate <= 0:
        raise ConfigurationError(f"a pace must be positive, got {rate}")
    out: Array = start + np.cumsum(rng.exponential(1.0 / rate, n))
    return out


def request_times(rng: np.random.Generator, sizes: Array, rate: float,
                  start: float = START) -> Array:
    """One timestamp per row, equal within a request; requests arrive at `rate` per second."""
    starts = poisson_times(rng, len(sizes), rate, start)
    out: Array = np.repeat(starts, sizes)
    return out


def batch_sizes(rng: np.random.Generator, n: int, lo: int, hi: int) -> Array:
    """Request sizes in [lo, hi] that add up to `n`."""
    sizes = rng.integers(lo, hi + 1, size=n // max(1, lo) + 1)
    cut = int(np.searchsorted(np.cumsum(sizes), n))
    out: Array = sizes[:cut + 1].copy()
    out[-1] -= int(out.sum()) - n
    out = out[out > 0]
    return out
