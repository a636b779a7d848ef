"""Query streams with simulated timestamps: attacks, and benign users a monitor must let be.

A detector is only as good as the benign traffic it was checked against, so the benign side is
not one friendly shuffle of held-out rows: it has the users that look most like thieves, i.e.
a service scoring batches in bursts, a user who only ever sees one or two classes, a user who
repeats queries, at rates from one query every five seconds to twenty a second. Benign rows are
the data's own rows (resampled when the data is small), never noised: noise is what attacks add.

Attack streams are the red team's attacks run against the victim (`redteam.attacks`), plus
natural rows with augmentation; their rows arrive at `ATTACK_RATE` queries per second, a script
that does not hurry. Timestamps are unix seconds, so velocity detectors see realistic timing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..redteam.attacks import make_attack
from ..redteam.attacks.base import JITTER
from ..redteam.data import Pool
from ..redteam.victims import Oracle, Recorder

Array = np.ndarray[Any, Any]

#: Simulated time of the first query (2025-06-15 UTC), so timestamps look like real ones.
START = 1_750_000_000.0
#: An attack script's pace, queries per second (Poisson arrivals).
ATTACK_RATE = 5.0
#: Paces of benign interactive users and services, queries per second; varied by seed.
BENIGN_RATES = (0.2, 1.0, 5.0, 20.0)
#: Attack streams: name → the red-team attack spec (``augmented`` is built here).
ATTACKS = {
    "jacobian": "jacobian", "uniform": "uniform", "equation": "equation",
    "linesearch": "equation:labels", "knockoff": "random", "augmented": "", "active": "active",
}
BENIGN = ("heldout", "fewclass", "repeater", "bursty")


@dataclass(frozen=True)
class Stream:
    """One caller's queries in order: rows [n, d] and their send times [n] (unix seconds)."""

    name: str
    kind: str  # an ATTACKS or BENIGN key
    attack: bool
    x: Array
    t: Array

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self) -> Iterator[tuple[float, Array]]:
        for i in range(len(self.x)):
            yield float(self.t[i]), self.x[i]


def poisson_times(rng: np.random.Generator, n: int, rate: float, start: float = START) -> Array:
    out: Array = start + np.cumsum(rng.exponential(1.0 / rate, n))
    return out


def burst_times(rng: np.random.Generator, n: int, start: float = START) -> Array:
    """Batches of ~100 rows sent at once, then minutes to an hour of quiet."""
    t = np.empty(n)
    now, i = start, 0
    while i < n:
        size = int(np.clip(rng.normal(100, 15), 40, 160))
        t[i:i + size] = now
        i += size
        now += 60.0 + rng.exponential(900.0)
    return t


# attacks ----------------------------------------------------------------------------------


def attack_stream(kind: str, victim: Oracle, pool: Pool, n: int, seed: int = 0,
                  rate: float = ATTACK_RATE) -> Stream:
    """`n` queries of one attack against `victim`, drawing natural rows from `pool`.

    ``knockoff`` sends clean pool rows only, so it stops at the pool's size.
    """
    if kind not in ATTACKS:
        raise ConfigurationError(f"unknown attack stream {kind!r}; use: {', '.join(ATTACKS)}")
    rng = np.random.default_rng(seed)
    if kind == "augmented":
        x = augmented(pool, n, rng)
    else:
        attack = make_attack(ATTACKS[kind], seed)
        budget = min(n, len(pool.x)) if kind == "knockoff" else n
        rec = Recorder(victim, budget, soft=attack.soft)
        attack.collect(rec, pool)
        x = rec.transcript()[0]
    return Stream(kind, kind, True, x, poisson_times(rng, len(x), rate))


def augmented(pool: Pool, n: int, rng: np.random.Generator, copies: int = 3) -> Array:
    """Each natural row in random order, followed by `copies` shifted or noised variants."""
    lo, hi = pool.bounds()
    side = math.isqrt(pool.n_features)
    image = side * side == pool.n_features and side >= 4
    out: list[Array] = []
    while sum(map(len, out)) < n:
        for row in pool.x[rng.permutation(len(pool.x))]:
            out.append(row[None, :])
            for c in range(copies):
                if image and c % 2 == 0:  # an image shifted by a pixel, as augmentation does
                    img = np.roll(row.reshape(side, side), rng.choice([-1, 1]),
                                  axis=int(rng.integers(0, 2)))
                    out.append(img.reshape(1, -1))
                else:
                    noise = rng.standard_normal(row.shape) * JITTER * (hi - lo)
                    out.append(np.clip(row + noise, lo, hi)[None, :])
            if sum(map(len, out)) >= n:
                break
    x: Array = np.concatenate(out)[:n]
    return x


# benign users -----------------------------------------------------------------------------


def benign_stream(kind: str, held: Array, labels: Array, n: int, seed: int = 0) -> Stream:
    """`n` queries of one benign user of `kind` drawing from the held-out rows."""
    rng = np.random.default_rng(seed)
    rate = BENIGN_RATES[seed % len(BENIGN_RATES)]
    if kind == "heldout":
        x, t = resample(held, n, rng), poisson_times(rng, n, rate)
    elif kind == "fewclass":
        classes = np.unique(labels)
        pick = rng.choice(classes, size=min(len(classes), 1 + seed % 2), replace=False)
        x, t = resample(held[np.isin(labels, pick)], n, rng), poisson_times(rng, n, rate)
    elif kind == "repeater":
        x, t = repeats(held, n, rng, rate)
    elif kind == "bursty":
        x, t = resample(held, n, rng), burst_times(rng, n)
    else:
        raise ConfigurationError(f"unknown benign stream {kind!r}; use: {', '.join(BENIGN)}")
    return Stream(f"{kind}-{seed}", kind, False, x, t)


def resample(rows: Array, n: int, rng: np.random.Generator) -> Array:
    """`n` rows in random order; every row once before any row twice."""
    reps = -(-n // len(rows))
    x: Array = np.concatenate([rows[rng.permutation(len(rows))] for _ in range(reps)])[:n]
    return x


def repeats(rows: Array, n: int, rng: np.random.Generator, rate: float) -> tuple[Array, Array]:
    """A user who re-sends each row a few times (refreshes, retries) a second or so apart."""
    fresh = resample(rows, n, rng)
    which = np.repeat(np.arange(n), 1 + rng.poisson(2.0, n))[:n]
    x: Array = fresh[which]
    first = np.r_[True, np.diff(which) != 0]
    gaps = np.where(first, rng.exponential(1.0 / rate, n), rng.uniform(0.5, 2.0, n))
    t: Array = START + np.cumsum(gaps)
    return x, t


def benign_suite(held: Array, labels: Array, *, streams: int = 22, n: int = 5000,
                 seed: int = 0) -> list[Stream]:
    """`streams` benign users cycling through the kinds, each with its own seed."""
    if len(held) < 2:
        raise ConfigurationError("benign streams need at least 2 held-out rows")
    return [benign_stream(BENIGN[i % len(BENIGN)], held, labels, n, seed + i)
            for i in range(streams)]
