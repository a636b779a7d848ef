"""Thieves that choose their queries: synthetic rows, and attacks that steer by the answers.

Uniform rows, equation solving and line search (Tramèr et al. 2016), Jacobian augmentation
(Papernot et al. 2017) and uncertainty sampling (Chandrasekaran et al. 2020) are the red
team's own attacks (`redteam.attacks`), run against the raw victim with a `Recorder`, so a
stream is exactly what the attack would send; the corpus varies their settings. k-center
(core-set, Sener and Savarese 2018) and boundary walks (bisect between rows the victim labels
differently, then walk along the boundary, as decision-based attacks do) are written here.
Adaptive thieves ask the raw model while they generate; the harness replays their rows
through the defended gateway afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...errors import ConfigurationError
from ...redteam.attacks import make_attack
from ...redteam.data import Pool
from ...redteam.victims import Recorder
from .rows import (
    UNKNOWN,
    Array,
    Drawn,
    Params,
    bounds,
    num,
    spread,
    text,
)
from .thieves import times
from .victims import CorpusWorld

Generator = Callable[[Params, CorpusWorld, int, np.random.Generator], Drawn]
#: Noise around pool rows (share of each feature's range) once a thief has used them all,
#: as the red team's attacks do.
JITTER = 0.05


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _attack(spec: str, overrides: dict[str, float], world: CorpusWorld, n: int,
            rng: np.random.Generator) -> Array:
    """The transcript of red-team attack `spec` (class constants overridden) against the
    raw victim."""
    attack = make_attack(spec, _seed(rng))
    for key, value in overrides.items():
        setattr(attack, key, type(getattr(attack, key))(value))
    rec = Recorder(world.victim, n, soft=attack.soft)
    attack.collect(rec, Pool(world.spec.name, world.pool_x, world.pool_y))
    x: Array = rec.transcript()[0]
    return x


def _drawn(world: CorpusWorld, x: Array, p: Params, rng: np.random.Generator) -> Drawn:
    """Rows an attack made; the true label is known for rows that are pool rows."""
    truth = np.full(len(x), UNKNOWN, dtype=np.int64)
    lookup = {row.tobytes(): int(c) for row, c in zip(world.pool_x, world.pool_y, strict=True)}
    for i, row in enumerate(np.asarray(x, dtype=np.float64)):
        truth[i] = lookup.get(row.tobytes(), UNKNOWN)
    return Drawn(np.asarray(x, dtype=np.float64), times(p, len(x), rng), truth)


def jacobian(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    spec = "jacobian:labels" if text(p, "variant", "soft") == "labels" else "jacobian"
    x = _attack(spec, {"STEP": num(p, "step"), "TAU": num(p, "tau")}, world, n, rng)
    return _drawn(world, x, p, rng)


def active_uncertainty(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator
                       ) -> Drawn:
    x = _attack("active", {"ROUNDS": num(p, "rounds")}, world, n, rng)
    return _drawn(world, x, p, rng)


def linesearch(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    overrides = {"BISECTIONS": num(p, "bisections"), "PAIRS": num(p, "pairs")}
    return _drawn(world, _attack("equation:labels", overrides, world, n, rng), p, rng)


def _box(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Array:
    """``box=range``: uniform in each feature's range; ``box=sd``: uniform within ``width``
    sds of its mean; ``box=gauss``: Gaussian with the data's mean and sd."""
    box, d = text(p, "box"), world.pool_x.shape[1]
    mean, sd = world.pool_x.mean(axis=0), spread(world)
    if box == "range":
        lo, hi = bounds(world)
        return rng.uniform(lo, hi, (n, d))
    if box == "sd":
        w = num(p, "width")
        return rng.uniform(mean - w * sd, mean + w * sd, (n, d))
    if box == "gauss":
        out: Array = mean + rng.standard_normal((n, d)) * sd
        return out
    raise ConfigurationError(f"box {box!r}: use range, sd or gauss")


def uniform(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    return Drawn(_box(p, world, n, rng), times(p, n, rng), np.full(n, UNKNOWN))


def equation(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Equation solving with probabilities: the red team's (uniform rows in the ranges), or
    rows in general position drawn from ``box``."""
    if text(p, "box", "attack") == "attack":
        return _drawn(world, _attack("equation", {}, world, n, rng), p, rng)
    return uniform(p, world, n, rng)


def _jitter(world: CorpusWorld, n: int, rng: np.random.Generator) -> Array:
    lo, hi = bounds(world)
    base = world.pool_x[rng.integers(0, len(world.pool_x), n)]
    out: Array = np.clip(base + rng.standard_normal(base.shape) * JITTER * (hi - lo), lo, hi)
    return out


def active_kcenter(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """Greedy k-center over the standardized pool: ``seeds`` random rows, then, ``batch`` at a
    time, the rows farthest from everything asked so far; jittered rows past the pool."""
    z = (world.pool_x - world.pool_x.mean(axis=0)) / np.maximum(spread(world), 1e-12)
    m = min(n, len(z))
    first = rng.choice(len(z), min(m, int(num(p, "seeds"))), replace=False)
    chosen = list(first)
    sq = (z**2).sum(axis=1)
    zc = z[first]
    mind = np.sqrt(np.maximum(sq[:, None] + (zc**2).sum(axis=1)[None, :] - 2 * z @ zc.T,
                              0.0)).min(axis=1)
    mind[first] = -1.0
    batch = int(num(p, "batch", 1))
    while len(chosen) < m:
        take = np.argsort(-mind, kind="stable")[:min(batch, m - len(chosen))]
        chosen.extend(int(i) for i in take)
        zt = z[take]
        d = np.sqrt(np.maximum(sq[:, None] + (zt**2).sum(axis=1)[None, :] - 2 * z @ zt.T,
                               0.0)).min(axis=1)
        mind = np.minimum(mind, d)
        mind[take] = -1.0
    idx = np.asarray(chosen, dtype=np.int64)
    x = np.vstack([world.pool_x[idx], _jitter(world, n - m, rng)])
    truth = np.r_[world.pool_y[idx], np.full(n - m, UNKNOWN)]
    return Drawn(x, times(p, n, rng), truth)


def boundary_walk(p: Params, world: CorpusWorld, n: int, rng: np.random.Generator) -> Drawn:
    """``walkers`` pairs of pool rows labelled differently are bisected ``bisect`` times; then
    each walk step moves the pair sideways by ``stride`` sds per feature (perpendicular to the
    pair), asks both ends, and re-bisects ``refine`` times where they still straddle the
    boundary (else the walker steps back and tries another direction)."""
    victim, sd = world.victim, np.maximum(spread(world), 1e-12)
    lo, hi = bounds(world)
    walkers = int(num(p, "walkers"))
    out: list[Array] = []
    sent = 0

    def ask(x: Array) -> Array:
        nonlocal sent
        x = np.clip(x, lo, hi)
        out.append(x)
        sent += len(x)
        labels: Array = victim.ask(x).labels
        return labels

    first = world.pool_x[rng.choice(len(world.pool_x), min(4 * walkers, len(world.pool_x),
                                                            max(1, n // 2)), replace=False)]
    la = ask(first)
    i, j = rng.integers(0, len(first), 8 * walkers), rng.integers(0, len(first), 8 * walkers)
    keep = la[i] != la[j]
    i, j = i[keep][:walkers], j[keep][:walkers]
    if not len(i):  # the victim gives these rows one label: nothing to bisect
        x = np.vstack(out)
        rest = _box({"box": "range"}, world, max(0, n - len(x)), rng)
        return _drawn(world, np.vstack([x, rest])[:n], p, rng)
    a, b, label_a = first[i].copy(), first[j].copy(), la[i].copy()

    def bisect(a: Array, b: Array, rounds: int) -> tuple[Array, Array]:
        for _ in range(rounds):
            if sent >= n:
                break
            mid = (a + b) / 2
            same = ask(mid) == label_a
            a = np.where(same[:, None], mid, a)
            b = np.where(same[:, None], b, mid)
        return a, b

    a, b = bisect(a, b, int(num(p, "bisect")))
    stride, refine = num(p, "stride"), int(num(p, "refine"))
    while sent < n:
        axis = (b - a) / sd
        axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-12)
        step = rng.standard_normal(a.shape)
        step -= (step * axis).sum(axis=1, keepdims=True) * axis
        step /= np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-12)
        move = step * stride * np.sqrt(a.shape[1]) * sd
        a2, b2 = np.clip(a + move, lo, hi), np.clip(b + move, lo, hi)
        ends = ask(np.vstack([a2, b2]))
        ok = (ends[:len(a)] == label_a) & (ends[len(a):] != label_a)
        a = np.where(ok[:, None], a2, a)
        b = np.where(ok[:, None], b2, b)
        a, b = bisect(a, b, refine)
    return _drawn(world, np.vstack(out)[:n], p, rng)


GENERATORS: dict[str, Generator] = {
    "jacobian": jacobian, "active-uncertainty": active_uncertainty,
    "active-kcenter": active_kcenter, "uniform": uniform, "equation": equation,
    "linesearch": linesearch, "boundary-walk": boundary_walk,
}
