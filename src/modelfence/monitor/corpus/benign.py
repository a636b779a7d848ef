"""Honest callers as a real user population shows them.

Every benign row is a natural row of the pool, or a re-read of a row the caller sent before
(exactly, or with measurement noise at the data's recorded precision). The ways honest
traffic looks like theft are the point: a caller who only sees one class, retries and
refreshes, re-reads rows with sensor noise, scores batches, sends bursts, whose traffic
drifts across the data slowly, a web app whose users come and go.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...errors import ConfigurationError
from .rows import (
    START,
    Array,
    Drawn,
    Params,
    batch_sizes,
    natural,
    num,
    poisson_times,
    request_times,
    resample,
    spread,
    text,
)
from .victims import CorpusWorld

Generator = Callable[[Params, CorpusWorld, int, np.random.Generator], Drawn]


def _rows(world: CorpusWorld, idx: Array, t: Array) -> Drawn:
    return Drawn(world.pool_x[idx].copy(), t, world.pool_y[idx].copy())


def random_order(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    idx = resample(len(world.pool_x), n, rng)
    return _rows(world, idx, poisson_times(rng, n, num(p, "pace")))


def skewed_indices(world: CorpusWorld, n: int, rng: np.random.Generator, p: Params) -> Array:
    """Pool rows of a few classes (``classes``: how many) or of all with a Zipf-like skew
    (``zipf``: the exponent), each class's rows once before any twice."""
    labels = world.pool_y
    present = rng.permutation(np.unique(labels))
    weights: Array
    if "classes" in p:
        weights = np.zeros(len(present))
        weights[:int(num(p, "classes"))] = 1.0
    else:
        weights = 1.0 / np.arange(1, len(present) + 1) ** num(p, "zipf")
    counts = rng.multinomial(n, weights / weights.sum())
    parts = []
    for c, m in zip(present, counts, strict=True):
        if m:
            rows = np.nonzero(labels == c)[0]
            parts.append(rows[resample(len(rows), int(m), rng)])
    idx: Array = np.concatenate(parts)[rng.permutation(n)]
    return idx


def class_skewed(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    idx = skewed_indices(world, n, rng, p)
    return _rows(world, idx, poisson_times(rng, n, num(p, "pace")))


def resend_sources(n: int, share: float, lag: str, rng: np.random.Generator
                   ) -> tuple[Array, Array]:
    """For each position, which earlier position it re-sends (itself when fresh).

    ``recent`` re-reads one of the last 1 to 20 rows, ``any`` any earlier row, ``mixed`` either
    half the time. Returns (source position, is re-send).
    """
    if lag not in ("recent", "any", "mixed"):
        raise ConfigurationError(f"re-send lag {lag!r}: use recent, any or mixed")
    again = rng.random(n) < share
    again[0] = False
    pos = np.arange(n)
    back_recent = rng.integers(1, 21, n)
    back_any = np.floor(rng.random(n) * pos).astype(np.int64) + 1  # 1..pos
    use_recent = np.full(n, lag == "recent") if lag != "mixed" else rng.random(n) < 0.5
    back = np.where(use_recent, np.minimum(back_recent, np.maximum(pos, 1)), back_any)
    src = np.where(again, pos - back, pos)
    for i in np.nonzero(again)[0]:  # a re-send of a re-send re-reads the original row
        src[i] = src[src[i]]
    return src, again


def resend_noise(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Fresh pool rows, and re-reads of earlier ones with Gaussian noise of ``scale`` times
    each feature's sd, recorded as the data is: inside its range, at its precision (so a tiny
    noise on integer pixels reads back the same row)."""
    fresh = resample(len(world.pool_x), n, rng)
    src, again = resend_sources(n, num(p, "share"), text(p, "lag", "mixed"), rng)
    idx = fresh[src]
    x = world.pool_x[idx].copy()
    sd = spread(world)
    noisy = x[again] + rng.standard_normal((int(again.sum()), x.shape[1])) * num(p, "scale") * sd
    x[again] = natural(world, noisy)
    return Drawn(x, poisson_times(rng, n, num(p, "pace")), world.pool_y[idx].copy())


def exact_repeats(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """``retries``: each row sent 1 + Poisson(``extra``) times, a second or two apart;
    ``reasks``: a ``share`` of rows asked again, exactly, some time later."""
    pace = num(p, "pace")
    if text(p, "mode") == "retries":
        fresh = resample(len(world.pool_x), n, rng)
        which = np.repeat(np.arange(n), 1 + rng.poisson(num(p, "extra"), n))[:n]
        first = np.r_[True, np.diff(which) != 0]
        gaps = np.where(first, rng.exponential(1.0 / pace, n), rng.uniform(0.5, 2.0, n))
        return _rows(world, fresh[which], START + np.cumsum(gaps))
    fresh = resample(len(world.pool_x), n, rng)
    src, _ = resend_sources(n, num(p, "share"), "any", rng)
    return _rows(world, fresh[src], poisson_times(rng, n, pace))


def small_batches(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Requests of ``lo``-``hi`` rows (one timestamp each) at ``pace`` requests a second."""
    idx = resample(len(world.pool_x), n, rng)
    sizes = batch_sizes(rng, n, int(num(p, "lo")), int(num(p, "hi")))
    return _rows(world, idx, request_times(rng, sizes, num(p, "pace")))


def bursts(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Bursts of about ``size`` rows, sent at once (``rate`` 0) or at ``rate`` rows a second,
    then ``quiet`` seconds (mean, exponential) of nothing."""
    idx = resample(len(world.pool_x), n, rng)
    size, rate, quiet = num(p, "size"), num(p, "rate"), num(p, "quiet")
    t = np.empty(n)
    now, i = START, 0
    while i < n:
        m = int(np.clip(rng.normal(size, size / 4), max(2, size / 3), 2 * size))
        m = min(m, n - i)
        t[i:i + m] = now if rate <= 0 else now + np.cumsum(rng.exponential(1.0 / rate, m))
        now = float(t[i + m - 1]) + 60.0 + rng.exponential(quiet)
        i += m
    return _rows(world, idx, t)


def drift(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Rows ordered so the mix drifts slowly: ``by=projection`` sorts by a noisy projection
    on a random direction (``noise``: its sd in units of the projection's sd), ``by=class``
    sorts by class rank plus Gaussian noise of ``width`` ranks."""
    idx = resample(len(world.pool_x), n, rng)
    if text(p, "by") == "projection":
        z = (world.pool_x[idx] - world.pool_x.mean(axis=0)) / np.maximum(spread(world), 1e-12)
        key = z @ rng.standard_normal(z.shape[1])
        key = key / max(float(key.std()), 1e-12) + rng.normal(0.0, num(p, "noise"), n)
    else:
        rank = {int(c): r for r, c in enumerate(rng.permutation(np.unique(world.pool_y)))}
        key = np.array([rank[int(c)] for c in world.pool_y[idx]], dtype=np.float64)
        key = key + rng.normal(0.0, num(p, "width"), n)
    idx = idx[np.argsort(key, kind="stable")]
    return _rows(world, idx, poisson_times(rng, n, num(p, "pace")))


def short_lived(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Users of one tenant who each send ``lo``-``hi`` queries and are gone, one after
    another (each its own key); ``mode=skewed`` users each see one to three classes."""
    idx = np.empty(n, dtype=np.int64)
    keys = np.empty(n, dtype=np.int64)
    t = np.empty(n)
    now, i, user = START, 0, 0
    lo, hi = int(num(p, "lo")), int(num(p, "hi"))
    while i < n:
        m = min(int(rng.integers(lo, hi + 1)), n - i)
        if text(p, "mode") == "skewed":
            few = {"classes": float(rng.integers(1, 4))}
            idx[i:i + m] = skewed_indices(world, m, rng, few)
        else:
            idx[i:i + m] = resample(len(world.pool_x), m, rng)
        t[i:i + m] = poisson_times(rng, m, num(p, "pace"), now)
        keys[i:i + m] = user
        now = float(t[i + m - 1]) + rng.exponential(120.0)
        i, user = i + m, user + 1
    return Drawn(world.pool_x[idx].copy(), t, world.pool_y[idx].copy(), keys=keys)


GENERATORS: dict[str, Generator] = {
    "random-order": random_order, "class-skewed": class_skewed, "exact-repeats": exact_repeats,
    "resend-noise": resend_noise, "small-batches": small_batches, "bursts": bursts,
    "drift": drift, "short-lived": short_lived,
}
