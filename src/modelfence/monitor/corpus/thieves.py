"""Thieves with natural data: Knockoff on clean rows, and the augmentations that stretch it.

A thief with a pool of natural rows sends them as they are (Knockoff, Orekondy et al. 2019)
or grows them the way training pipelines grow data: Gaussian noise of a share of each
feature's sd (each fresh row noised, or a seed row followed by noisy copies), a shift (a
tabular row moved by a constant share of the sd on every feature; an image moved by pixels),
mixup (Zhang et al. 2018: convex combinations of two rows) and interpolation between rows of
different classes. A ``snap`` thief rounds its rows to the data's recorded precision, as one
that knows the data would. Rows are clipped to the data's range: the thief knows it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...errors import ConfigurationError
from .rows import (
    SCRIPT_RATE,
    UNKNOWN,
    Array,
    Drawn,
    Params,
    batch_sizes,
    bounds,
    decimals,
    num,
    poisson_times,
    request_times,
    resample,
    shift_image,
    snap,
    spread,
    text,
)
from .victims import CorpusWorld

Generator = Callable[[Params, CorpusWorld, int, np.random.Generator], Drawn]


def times(p: Params, n: int, rng: np.random.Generator) -> Array:
    """``pace`` queries a second (Poisson), or with ``batch``: requests of that many rows."""
    pace = num(p, "pace", SCRIPT_RATE)
    if "batch" in p:
        b = int(num(p, "batch"))
        return request_times(rng, batch_sizes(rng, n, b, b), pace)
    return poisson_times(rng, n, pace)


def knockoff(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    idx = resample(len(world.pool_x), n, rng)
    return Drawn(world.pool_x[idx].copy(), times(p, n, rng), world.pool_y[idx].copy())


def _expand(world: CorpusWorld, n: int, rng: np.random.Generator, p: Params
            ) -> tuple[Array, Array]:
    """(source pool row per position, True where the row is to be augmented).

    ``mode=each``: every row a fresh pool row, augmented; ``mode=copies``: a clean seed row
    followed by ``k`` augmented copies of it.
    """
    mode = text(p, "mode", "each")
    if mode == "each":
        return resample(len(world.pool_x), n, rng), np.ones(n, dtype=bool)
    if mode != "copies":
        raise ConfigurationError(f"augmentation mode {mode!r}: use each or copies")
    k = int(num(p, "k"))
    seeds = resample(len(world.pool_x), -(-n // (k + 1)), rng)
    src = np.repeat(seeds, k + 1)[:n]
    aug = (np.arange(len(src)) % (k + 1)) != 0
    return src, aug


def _finish(world: CorpusWorld, x: Array, aug: Array, src: Array, p: Params,
            rng: np.random.Generator) -> Drawn:
    lo, hi = bounds(world)
    x = np.clip(x, lo, hi)
    if num(p, "snap", 0.0):
        x[aug] = snap(x[aug], decimals(world.pool_x))
    truth = np.where(aug, UNKNOWN, world.pool_y[src])
    return Drawn(x, times(p, len(x), rng), truth)


def augment_noise(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    src, aug = _expand(world, n, rng, p)
    x = world.pool_x[src].copy()
    x[aug] += rng.standard_normal((int(aug.sum()), x.shape[1])) * num(p, "scale") * spread(world)
    return _finish(world, x, aug, src, p, rng)


def augment_shift(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Tabular: every feature moved by ``frac`` of its sd, in a random direction per feature;
    images: moved by 1..``pixels`` pixels."""
    src, aug = _expand(world, n, rng, p)
    x = world.pool_x[src].copy()
    side = world.spec.image_side
    if side is not None:
        x[aug] = shift_image(x[aug], side, rng, int(num(p, "pixels", 1)))
    else:
        signs = rng.choice([-1.0, 1.0], size=(int(aug.sum()), x.shape[1]))
        x[aug] += signs * num(p, "frac") * spread(world)
    return _finish(world, x, aug, src, p, rng)


def _lambdas(p: Params, m: int, rng: np.random.Generator) -> Array:
    dist = text(p, "lam")
    if dist == "uniform":
        return rng.uniform(0.0, 1.0, m)
    if dist.startswith("beta:"):
        a = float(dist.removeprefix("beta:"))
        return rng.beta(a, a, m)
    raise ConfigurationError(f"mixup lambda {dist!r}: use uniform or beta:A")


def augment_mixup(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Convex combinations of two random pool rows; a ``clean`` share of rows sent as is."""
    a = resample(len(world.pool_x), n, rng)
    b = rng.integers(0, len(world.pool_x), n)
    lam = _lambdas(p, n, rng)[:, None]
    aug = rng.random(n) >= num(p, "clean", 0.0)
    x = world.pool_x[a].copy()
    x[aug] = (lam * world.pool_x[a] + (1.0 - lam) * world.pool_x[b])[aug]
    return _finish(world, x, aug, a, p, rng)


def augment_interp(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Points on segments between two pool rows of different classes: ``points`` per pair at
    random (``at=random``, t in [0.2, 0.8]) or evenly spaced (``at=grid``), after the two
    end rows when ``endpoints`` is 1."""
    y = world.pool_y
    points, ends = int(num(p, "points")), int(num(p, "endpoints", 0.0))
    per = points + 2 * ends
    pairs = -(-n // per)
    a = resample(len(y), pairs, rng)
    b = rng.integers(0, len(y), pairs)
    for _ in range(20):  # redraw partners of the same class (one-class pools keep them)
        same = y[a] == y[b]
        if not same.any():
            break
        b[same] = rng.integers(0, len(y), int(same.sum()))
    if text(p, "at") == "grid":
        t = np.tile(np.arange(1, points + 1) / (points + 1), (pairs, 1))
    else:
        t = rng.uniform(0.2, 0.8, (pairs, points))
    xa, xb = world.pool_x[a], world.pool_x[b]
    mids = xa[:, None, :] + t[:, :, None] * (xb - xa)[:, None, :]
    blocks = [mids]
    if ends:
        blocks = [xa[:, None, :], xb[:, None, :], mids]
    x = np.concatenate(blocks, axis=1).reshape(pairs * per, -1)[:n]
    kind = np.tile(np.r_[np.zeros(2 * ends), np.ones(points)], pairs)[:n].astype(bool)
    src = np.tile(np.r_[np.zeros(ends, dtype=np.int64), np.ones(ends, dtype=np.int64),
                        np.zeros(points, dtype=np.int64)], pairs)[:n]
    rows = np.where(src == 0, np.repeat(a, per)[:n], np.repeat(b, per)[:n])
    return _finish(world, x, kind, rows, p, rng)


GENERATORS: dict[str, Generator] = {
    "knockoff": knockoff, "augment-noise": augment_noise, "augment-shift": augment_shift,
    "augment-mixup": augment_mixup, "augment-interp": augment_interp,
}
