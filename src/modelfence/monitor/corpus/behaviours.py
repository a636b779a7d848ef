"""The corpus's callers: honest behaviours and thieves, each with settings in two halves.

A `Behaviour` is a family ("resend-noise", "augment-mixup", ...) with settings; the catalogue
has every family in both halves with different settings (noise at 0.1/1/5% of the sd in the
dev half, 0.5/2/10% in the test half; mixup lambda Beta(0.4) vs Uniform; ...), so that
defaults tuned on dev are judged on settings they never saw. A thief carries the issue's
target: flagged within 200 queries (synthetic rows), 500 (augmentation at 5% of the spread or
more, active learning), or None (reported only: Knockoff, Sybil, slow-and-low, augmentation
below 5%).

`generate` turns a behaviour into one caller's stream against a victim: rows in send order,
unix-second timestamps, the key and tenant of every row, and the true labels of natural
rows (so the harness can measure what honest callers lose). Same seed, same stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigurationError
from . import adaptive, benign, thieves
from .rows import START, UNKNOWN, Array, Drawn, Params
from .victims import HALVES, CorpusWorld

SIDES = ("benign", "thief")
BENIGN_FAMILIES = ("random-order", "class-skewed", "exact-repeats", "resend-noise",
                   "small-batches", "bursts", "drift", "short-lived")
THIEF_FAMILIES = ("knockoff", "augment-noise", "augment-shift", "augment-mixup",
                  "augment-interp", "jacobian", "active-uncertainty", "active-kcenter",
                  "uniform", "equation", "linesearch", "boundary-walk", "sybil-keys",
                  "sybil-tenants", "slow-low")
#: Issue 15's targets: flagged within this many queries.
SYNTHETIC, AUGMENTED = 200, 500
Generator = Callable[[Params, CorpusWorld, int, np.random.Generator], Drawn]
GENERATORS: dict[str, Generator] = {**benign.GENERATORS, **thieves.GENERATORS,
                                    **adaptive.GENERATORS}
#: Families that send another family's traffic differently (over keys, tenants, slowly).
WRAPPED = ("sybil-keys", "sybil-tenants", "slow-low")


@dataclass(frozen=True)
class Behaviour:
    name: str  # unique: "resend-noise-2pct", "augment-mixup-beta0.4", "sybil-10-keys-noise"
    side: str  # "benign" | "thief"
    family: str  # one of BENIGN_FAMILIES or THIEF_FAMILIES
    params: tuple[tuple[str, float | str], ...]
    half: str  # "dev" | "test"
    target: int | None  # thieves: flagged within this many queries; None: reported only

    @property
    def options(self) -> dict[str, float | str]:
        return dict(self.params)

    def param(self, key: str, default: float | str | None = None) -> float | str | None:
        return self.options.get(key, default)


@dataclass(frozen=True)
class CallerStream:
    """One caller's queries. `truth` holds the true label of every natural row and -1 for
    rows the caller made up (None when no row is natural)."""

    behaviour: Behaviour
    x: Array  # [n, d] rows in send order
    t: Array  # [n] unix seconds, non-decreasing
    principals: tuple[str, ...]  # per row, the API key (one value unless Sybil/short-lived)
    tenants: tuple[str, ...]  # per row, the tenant
    truth: Array | None  # [n] true labels where known, -1 elsewhere

    def __len__(self) -> int:
        return len(self.x)


def generate(behaviour: Behaviour, world: CorpusWorld, n: int, seed: int) -> CallerStream:
    """`n` queries of `behaviour` against `world`; deterministic for a (behaviour, world,
    seed)."""
    if n < 1:
        raise ConfigurationError("a stream needs at least one query")
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng([seed, _stable(behaviour.name), _stable(world.spec.name)])
    p = behaviour.options
    if behaviour.family not in (*GENERATORS, *WRAPPED):
        raise ConfigurationError(f"unknown behaviour family {behaviour.family!r}")
    # one thread: adaptive thieves fit small models, which threads only slow down on a busy
    # machine, and the corpus generates streams side by side
    with threadpool_limits(1), np.errstate(over="ignore"):  # a substitute's exp may overflow
        if behaviour.family in WRAPPED:
            drawn = _wrapped(behaviour.family, p, world, n, rng)
        else:
            drawn = GENERATORS[behaviour.family](p, world, n, rng)
    who = f"{behaviour.name}#{seed}"
    keys = drawn.keys
    tenants = drawn.tenants
    principals = ((who,) * len(drawn.x) if keys is None
                  else tuple(f"{who}/key-{int(k)}" for k in keys))
    tenant_names = ((f"tenant-{who}",) * len(drawn.x) if tenants is None
                    else tuple(f"tenant-{who}/{int(k)}" for k in tenants))
    truth = None if not np.any(drawn.truth != UNKNOWN) else drawn.truth.astype(np.int64)
    return CallerStream(behaviour, drawn.x, drawn.t, principals, tenant_names, truth)


def as_one_caller(stream: CallerStream, principal: str = "one-key") -> CallerStream:
    """The same rows at the same times from one key of one tenant: what a Sybil thief's
    traffic would look like unsplit, for comparing tenant-level with key-level detection."""
    n = len(stream.x)
    return CallerStream(stream.behaviour, stream.x, stream.t, (principal,) * n,
                        (f"tenant-{principal}",) * n, stream.truth)


def _stable(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def _inner(p: Params) -> tuple[str, dict[str, float | str]]:
    """The traffic a Sybil or slow thief sends: ``inner`` family, ``inner.KEY`` settings."""
    family = str(p.get("inner", ""))
    if family not in GENERATORS:
        raise ConfigurationError(f"inner behaviour {family!r} is not a family")
    return family, {k.removeprefix("inner."): v for k, v in p.items() if k.startswith("inner.")}


def _wrapped(family: str, p: Params, world: CorpusWorld, n: int, rng: np.random.Generator
             ) -> Drawn:
    """Sybil: the inner traffic split over ``keys`` keys of one tenant, or over ``keys`` keys
    in ``tenants`` tenants; slow-and-low: the inner rows at one every ``lo``-``hi`` seconds,
    with a night's pause every ``day`` queries or so."""
    inner, ip = _inner(p)
    d = GENERATORS[inner](ip, world, n, rng)
    if family == "slow-low":
        gaps = rng.uniform(float(p["lo"]), float(p["hi"]), n)
        day = float(p["day"])
        nights = rng.random(n) < 1.0 / day
        gaps = gaps + nights * rng.uniform(6 * 3600, 10 * 3600, n)
        return Drawn(d.x, START + np.cumsum(gaps), d.truth)
    keys = int(float(p["keys"]))
    if str(p.get("assign", "random")) == "random":
        k = rng.integers(0, keys, n)
    else:  # round robin in blocks of ``block`` rows
        k = (np.arange(n) // int(float(p.get("block", 1)))) % keys
    tenants = None
    if family == "sybil-tenants":
        per = keys // int(float(p["tenants"]))
        tenants = k // max(1, per)
    return Drawn(d.x, d.t, d.truth, keys=k, tenants=tenants)


def _b(name: str, family: str, half: str, **params: float | str) -> Behaviour:
    return Behaviour(name, "benign", family, tuple(params.items()), half, None)


def _t(name: str, family: str, half: str, target: int | None, **params: float | str
       ) -> Behaviour:
    return Behaviour(name, "thief", family, tuple(params.items()), half, target)


def _i(**params: float | str) -> dict[str, float | str]:
    """Inner settings for Sybil and slow thieves."""
    return {f"inner.{k}": v for k, v in params.items()}


#: Paces are queries (or requests) per second.
BEHAVIOURS: tuple[Behaviour, ...] = (
    # benign, dev -------------------------------------------------------------------------
    _b("random-order-1qps", "random-order", "dev", pace=1.0),
    _b("random-order-20qps", "random-order", "dev", pace=20.0),
    _b("class-skewed-1class", "class-skewed", "dev", classes=1, pace=0.5),
    _b("class-skewed-zipf1.2", "class-skewed", "dev", zipf=1.2, pace=2.0),
    _b("exact-repeats-retries", "exact-repeats", "dev", mode="retries", extra=2.0, pace=1.0),
    _b("resend-noise-0.1pct", "resend-noise", "dev", scale=0.001, share=0.3, lag="recent",
       pace=1.0),
    _b("resend-noise-1pct", "resend-noise", "dev", scale=0.01, share=0.6, lag="mixed",
       pace=0.5),
    _b("resend-noise-5pct", "resend-noise", "dev", scale=0.05, share=0.1, lag="any", pace=5.0),
    _b("small-batches-2to8", "small-batches", "dev", lo=2, hi=8, pace=0.5),
    _b("bursts-batch100", "bursts", "dev", size=100, rate=0.0, quiet=900.0),
    _b("drift-projection", "drift", "dev", by="projection", noise=0.3, pace=2.0),
    _b("short-lived-random", "short-lived", "dev", lo=50, hi=300, mode="random", pace=1.0),
    # benign, test ------------------------------------------------------------------------
    _b("random-order-0.2qps", "random-order", "test", pace=0.2),
    _b("random-order-5qps", "random-order", "test", pace=5.0),
    _b("class-skewed-2class", "class-skewed", "test", classes=2, pace=1.0),
    _b("class-skewed-zipf2", "class-skewed", "test", zipf=2.0, pace=5.0),
    _b("exact-repeats-reasks", "exact-repeats", "test", mode="reasks", share=0.3, pace=2.0),
    _b("resend-noise-0.5pct", "resend-noise", "test", scale=0.005, share=0.45, lag="recent",
       pace=2.0),
    _b("resend-noise-2pct", "resend-noise", "test", scale=0.02, share=0.2, lag="any",
       pace=1.0),
    _b("resend-noise-10pct", "resend-noise", "test", scale=0.10, share=0.5, lag="mixed",
       pace=0.2),
    _b("small-batches-4to16", "small-batches", "test", lo=4, hi=16, pace=0.2),
    _b("bursts-20qps", "bursts", "test", size=200, rate=20.0, quiet=1800.0),
    _b("drift-class", "drift", "test", by="class", width=1.5, pace=1.0),
    _b("short-lived-skewed", "short-lived", "test", lo=50, hi=300, mode="skewed", pace=3.0),
    # thieves, dev ------------------------------------------------------------------------
    _t("knockoff-5qps", "knockoff", "dev", None, pace=5.0),
    _t("augment-noise-2pct-each", "augment-noise", "dev", None, scale=0.02, mode="each"),
    _t("augment-noise-10pct-copies3", "augment-noise", "dev", AUGMENTED, scale=0.10,
       mode="copies", k=3),
    _t("augment-noise-40pct-each", "augment-noise", "dev", AUGMENTED, scale=0.40, mode="each"),
    _t("augment-noise-10pct-each-snapped", "augment-noise", "dev", AUGMENTED, scale=0.10,
       mode="each", snap=1),
    _t("augment-shift-5pct-each", "augment-shift", "dev", AUGMENTED, frac=0.05, pixels=1,
       mode="each"),
    _t("augment-shift-20pct-copies3", "augment-shift", "dev", AUGMENTED, frac=0.20, pixels=2,
       mode="copies", k=3),
    _t("augment-mixup-beta0.4", "augment-mixup", "dev", AUGMENTED, lam="beta:0.4"),
    _t("augment-interp-ends-random", "augment-interp", "dev", AUGMENTED, points=1,
       endpoints=1, at="random"),
    _t("jacobian-step0.1", "jacobian", "dev", SYNTHETIC, step=0.1, tau=3),
    _t("active-uncertainty-10rounds", "active-uncertainty", "dev", AUGMENTED, rounds=10),
    _t("active-kcenter-greedy", "active-kcenter", "dev", AUGMENTED, seeds=20, batch=1),
    _t("uniform-range", "uniform", "dev", SYNTHETIC, box="range"),
    _t("equation-uniform", "equation", "dev", SYNTHETIC, box="attack"),
    _t("linesearch-6x16", "linesearch", "dev", SYNTHETIC, bisections=6, pairs=16),
    _t("boundary-walk-stride0.1", "boundary-walk", "dev", SYNTHETIC, walkers=16, bisect=8,
       stride=0.1, refine=3),
    _t("sybil-10-keys-noise10", "sybil-keys", "dev", None, keys=10, assign="random",
       inner="augment-noise", **_i(scale=0.10, mode="copies", k=3)),
    _t("sybil-5-tenants-knockoff", "sybil-tenants", "dev", None, keys=10, tenants=5,
       assign="random", inner="knockoff", **_i(pace=5.0)),
    _t("slow-low-knockoff", "slow-low", "dev", None, lo=30.0, hi=120.0, day=600,
       inner="knockoff"),
    # thieves, test -----------------------------------------------------------------------
    _t("knockoff-batch10", "knockoff", "test", None, batch=10, pace=0.5),
    _t("augment-noise-2pct-copies5", "augment-noise", "test", None, scale=0.02,
       mode="copies", k=5),
    _t("augment-noise-5pct-each", "augment-noise", "test", AUGMENTED, scale=0.05, mode="each"),
    _t("augment-noise-20pct-copies2", "augment-noise", "test", AUGMENTED, scale=0.20,
       mode="copies", k=2),
    _t("augment-noise-5pct-copies3-snapped", "augment-noise", "test", AUGMENTED, scale=0.05,
       mode="copies", k=3, snap=1),
    _t("augment-shift-10pct-each", "augment-shift", "test", AUGMENTED, frac=0.10, pixels=1,
       mode="each"),
    _t("augment-shift-40pct-copies2", "augment-shift", "test", AUGMENTED, frac=0.40, pixels=2,
       mode="copies", k=2),
    _t("augment-mixup-uniform-clean25", "augment-mixup", "test", AUGMENTED, lam="uniform",
       clean=0.25),
    _t("augment-interp-grid3", "augment-interp", "test", AUGMENTED, points=3, endpoints=0,
       at="grid"),
    _t("jacobian-step0.05-labels", "jacobian", "test", SYNTHETIC, step=0.05, tau=2,
       variant="labels"),
    _t("active-uncertainty-20rounds", "active-uncertainty", "test", AUGMENTED, rounds=20),
    _t("active-kcenter-batch50", "active-kcenter", "test", AUGMENTED, seeds=100, batch=50),
    _t("uniform-sd2", "uniform", "test", SYNTHETIC, box="sd", width=2.0),
    _t("equation-gauss", "equation", "test", SYNTHETIC, box="gauss"),
    _t("linesearch-8x32", "linesearch", "test", SYNTHETIC, bisections=8, pairs=32),
    _t("boundary-walk-stride0.3", "boundary-walk", "test", SYNTHETIC, walkers=32, bisect=6,
       stride=0.3, refine=2),
    _t("sybil-10-keys-jacobian", "sybil-keys", "test", None, keys=10, assign="blocks",
       block=20, inner="jacobian", **_i(step=0.1, tau=3)),
    _t("sybil-5-tenants-mixup", "sybil-tenants", "test", None, keys=10, tenants=5,
       assign="random", inner="augment-mixup", **_i(lam="uniform")),
    _t("slow-low-noise10", "slow-low", "test", None, lo=45.0, hi=90.0, day=800,
       inner="augment-noise", **_i(scale=0.10, mode="each")),
)


def behaviours(half: str | None = None, side: str | None = None) -> tuple[Behaviour, ...]:
    """The catalogue, filtered by half and side."""
    if half is not None and half not in HALVES:
        raise ConfigurationError(f"unknown half {half!r}; use dev or test")
    if side is not None and side not in SIDES:
        raise ConfigurationError(f"unknown side {side!r}; use benign or thief")
    return tuple(b for b in BEHAVIOURS
                 if (half is None or b.half == half) and (side is None or b.side == side))


def behaviour(name: str) -> Behaviour:
    for b in BEHAVIOURS:
        if b.name == name:
            return b
    raise ConfigurationError(f"unknown behaviour {name!r}")


def describe(b: Behaviour) -> str:
    """`family key=value ...`, for reports."""
    return " ".join([b.family, *(f"{k}={v}" for k, v in b.params)])
