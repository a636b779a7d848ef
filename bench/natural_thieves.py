"""Natural-data Knockoff: which signals still see a thief that sends what users send.

A Knockoff thief holding clean rows from the model's own distribution asks exactly what a
benign user of that data asks, so no per-query detector can tell the two apart. What is
left is *how much* it asks and what the product does about how much. This bench measures
each remaining signal on several corpus victims (`modelfence.monitor.corpus.victims`):

1. **Volume against peers**: one `Monitor` (volume detector only: it reads counts, never
   rows) and its shared `PeerStats`, fed a population of benign callers with heavy-tailed
   daily volumes (lognormal; a tenth are nightly batch scorers ten times heavier; some live
   one day only) for a 48-hour warm-up, then for 48 more hours with one thief sending 5x,
   20x, 100x the population's 99th-percentile daily volume, steadily. Reported: when (hours
   after it started, queries sent) the thief's key and its tenant are flagged, and how many
   benign callers and tenants are flagged, during the cold start and after it.
2. **Coverage over time**: distinct cells of a fine k-means codebook (fitted on rows nobody
   queries) that a caller's first n rows reach, as a z-score against iid draws, for the
   natural Knockoff thief, a coverage-seeking thief (round-robin over its own clusters), and
   benign users (random order, one class mostly, one region, slow drift, a re-read working
   set); and the share of benign users that any long-horizon coverage threshold catching
   the thief would flag. Also the full default monitor's highest risk for the Knockoff thief.
3. **Tenant aggregation**: the thief split over 10 keys of one tenant (item 1's population):
   the tenant's volume against peer tenants, next to one key carrying the same traffic.
4. **Budgets**: fidelity (top-1 agreement with the victim on never-queried rows) of a
   label-only MLP copy trained on n natural rows, n = 100 ... 5,000 (capped at the pool),
   against the copy trained on the whole pool (its undefended fidelity), and what a daily
   per-key budget sized at the population's 99.9th-percentile caller-day leaves it.

The watermark (README, "Watermarks and ownership") is the after-the-fact proof against this
thief and is not measured here (bench/watermark.py does).

Targets (issue 15): natural-data Knockoff: reported (no pass/fail). Volume: no benign caller
flagged after the cold start.

    python bench/natural_thieves.py [--victims N|name,name] [--populations N] [--callers N]
                                    [--quick] [--json PATH]

Runs in under 3 minutes on the 2-core machine with the defaults (4 test-half victims,
2 populations of 120 callers); --quick is a smoke run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from modelfence.monitor.score import Monitor, MonitorSettings
from modelfence.monitor.summary import Array, Summary, expected_distinct
from modelfence.redteam.thieves import make_thief
from modelfence.redteam.victims import LocalVictim

#: Bundled sets too small to hold a pool worth the name (wine's pool is 62 rows).
TINY = ("wine", "breast_cancer")
MULTIPLIERS = (5.0, 20.0, 100.0)
SYBIL_KEYS = 10
TICK = 600  # seconds: the simulation's step (the volume detector's velocity window is 10 min)
EPOCH = 1_767_225_600  # 2026-01-01 00:00 UTC, a Thursday
CURVE = (50, 100, 200, 500, 1000, 2000, 5000)
COVERAGE_AT = (100, 500, 1000, 2000)


@dataclass(frozen=True)
class World:
    """What this bench needs of a victim."""

    name: str
    victim: LocalVictim
    summary: Summary
    pool_x: Array
    pool_y: Array
    test_x: Array
    accuracy: float


def spread(n: int) -> list[str]:
    """`n` test-half victims, one of each model family first, in corpus order."""
    from modelfence.monitor.corpus.victims import victims

    pool = [v for v in victims("test") if v.data not in TINY]
    first: dict[str, str] = {}
    for v in pool:
        first.setdefault(v.family, v.name)
    names = list(first.values())
    names += [v.name for v in pool if v.name not in names]
    return names[:n]


def load_worlds(names: list[str], seed: int) -> list[World]:
    from modelfence.monitor.corpus.victims import build_world, victim

    out = []
    for name in names:
        w = build_world(victim(name), seed)
        out.append(World(name, w.victim, w.summary, w.pool_x, w.pool_y, w.test_x, w.accuracy))
    return out


def labels(world: World, x: Array) -> Array:
    return np.asarray(world.victim.ask(x).labels)


# 1 + 3: a population of callers on one monitor -------------------------------------------


@dataclass(frozen=True)
class Population:
    """How many a model's callers ask per day: lognormal, with batch scorers and short lives."""

    callers: int = 120
    median: float = 100.0  # an interactive caller's queries a day, median
    sigma: float = 1.0  # of log daily volume across callers
    day_sigma: float = 0.3  # of log volume from one day to the next, per caller
    batch_share: float = 0.1  # nightly batch scorers
    batch_factor: float = 10.0  # ... this many times heavier
    short_lived: float = 0.15  # callers active on one day only
    tenants: int = 30  # callers belong to tenants of Zipf-distributed sizes
    rows_per_request: float = 5.0

    def daily(self, rng: np.random.Generator, n: int) -> tuple[Array, Array]:
        """(base daily volume, is a batch scorer) for `n` callers."""
        batch = rng.random(n) < self.batch_share
        base = self.median * np.exp(self.sigma * rng.standard_normal(n))
        return np.where(batch, base * self.batch_factor, base), batch

    def budget(self, q: float = 0.999, seed: int = 0) -> float:
        """The `q` quantile of caller-days (what a per-key daily budget would be sized at)."""
        rng = np.random.default_rng(seed)
        base, _ = self.daily(rng, 200_000)
        return float(np.quantile(base * np.exp(self.day_sigma * rng.standard_normal(len(base))), q))


@dataclass(frozen=True)
class Plan:
    """One population's callers and their queries as (tick, caller, rows), tick-sorted."""

    keys: list[str]
    tenants: list[str]
    batch: Array  # [callers] bool
    p99: float  # the 99th percentile of callers' mean daily volume (the thief's yardstick)
    events: Array  # [m, 3] int64: tick, caller, rows


def plan_population(pop: Population, days: int, seed: int) -> Plan:
    rng = np.random.default_rng(seed)
    n = pop.callers
    base, batch = pop.daily(rng, n)
    weights = 1.0 / np.arange(1, pop.tenants + 1)
    tenant = rng.choice(pop.tenants, n, p=weights / weights.sum())
    start = rng.integers(0, 24, n)  # local working day starts here (UTC hour), 10 hours long
    night = rng.integers(0, 24, n)  # a batch scorer's hour
    only = np.where(rng.random(n) < pop.short_lived, rng.integers(0, days, n), -1)
    ticks_day = 86_400 // TICK
    rows: dict[tuple[int, int], int] = {}  # (tick, caller) -> rows
    totals = np.zeros(n)
    for day in range(days):
        for c in range(n):
            if only[c] >= 0 and only[c] != day:
                continue
            volume = round(float(base[c]) * math.exp(pop.day_sigma * rng.standard_normal()))
            if volume <= 0:
                continue
            totals[c] += volume
            first = day * ticks_day
            if batch[c]:  # the whole day's rows in half an hour
                ticks = first + int(night[c]) * 6 + np.arange(3)
                split = rng.multinomial(volume, [1 / 3] * 3)
            else:  # requests of a few rows at random moments of a 10-hour working day
                requests = max(1, round(volume / pop.rows_per_request))
                ticks = first + int(start[c]) * 6 + rng.integers(0, 60, requests)
                split = rng.multinomial(volume, [1 / requests] * requests)
            for t, r in zip(ticks.tolist(), split.tolist(), strict=True):
                if r:
                    rows[(t, c)] = rows.get((t, c), 0) + r
    ev = np.array([(t, c, r) for (t, c), r in sorted(rows.items())], np.int64).reshape(-1, 3)
    active_days = np.where(only >= 0, 1, days)
    p99 = float(np.quantile(totals / active_days, 0.99))
    return Plan([f"user-{c}" for c in range(n)], [f"tenant-{t}" for t in tenant], batch, p99, ev)


@dataclass
class PopulationRun:
    scenario: str
    multiplier: float
    keys: int
    thief_daily: float
    key_flagged_h: float | None = None  # hours after the thief started
    key_flagged_q: int | None = None  # the thief's queries (all keys) by then
    tenant_flagged_h: float | None = None
    tenant_flagged_q: int | None = None
    thief_score: float = 0.0  # highest volume score of any thief key
    thief_tenant_score: float = 0.0
    benign_flagged: list[str] = field(default_factory=list)
    benign_flagged_batch: int = 0
    benign_tenants_flagged: list[str] = field(default_factory=list)
    benign_max_score: float = 0.0
    benign_scored: int = 0  # benign callers whose volume score ever rose above 0


class Feeder:
    """Rows for the monitor: the pool cycled, with the victim's probabilities precomputed."""

    def __init__(self, world: World) -> None:
        self.x = world.pool_x
        proba = world.victim.ask(self.x).proba
        assert proba is not None
        self.p = proba
        self.at = 0

    def rows(self, n: int) -> tuple[Array, Array]:
        idx = (self.at + np.arange(n)) % len(self.x)
        self.at = int((self.at + n) % len(self.x))
        return self.x[idx], self.p[idx]


def volume_monitor(world: World) -> Monitor:
    return Monitor(world.summary, MonitorSettings(detectors=("volume",)))


def replay(monitor: Monitor, plan: Plan, events: Array, feeder: Feeder, run: PopulationRun,
           thief: dict[int, tuple[str, str]], start_tick: int) -> None:
    """Feed `events` (caller ids >= callers are thief keys in `thief`) and record flags."""
    threshold = monitor.settings.threshold
    n = len(plan.keys)
    thief_q = 0
    scored: set[str] = set()
    for t, c, r in events.tolist():
        if c >= n and run.key_flagged_h is not None and run.tenant_flagged_h is not None:
            continue  # both flagged: the rest of its rows would change nothing measured
        key, tenant = thief[c] if c >= n else (plan.keys[c], plan.tenants[c])
        x, p = feeder.rows(r)
        monitor.observe(key, x, p, tenant=tenant, now=float(EPOCH + t * TICK + 30))
        own, ten = monitor.peek(key), monitor.peek_tenant(tenant)
        hours = (t - start_tick + 1) * TICK / 3600
        if c >= n:
            thief_q += r
            run.thief_score = max(run.thief_score, own)
            run.thief_tenant_score = max(run.thief_tenant_score, ten)
            if own >= threshold and run.key_flagged_h is None:
                run.key_flagged_h, run.key_flagged_q = hours, thief_q
            if ten >= threshold and run.tenant_flagged_h is None:
                run.tenant_flagged_h, run.tenant_flagged_q = hours, thief_q
            continue
        run.benign_max_score = max(run.benign_max_score, own)
        if own > 0:
            scored.add(key)
        if own >= threshold and key not in run.benign_flagged:
            run.benign_flagged.append(key)
            run.benign_flagged_batch += int(plan.batch[c])
        if ten >= threshold and tenant not in run.benign_tenants_flagged:
            run.benign_tenants_flagged.append(tenant)
    run.benign_scored = len(scored)


def thief_events(daily: float, keys: int, first: int, last: int, callers: int) -> Array:
    """A steady thief: `daily` rows a day, every tick, spread over its keys in turn."""
    per_tick = daily * TICK / 86_400
    out, owed = [], 0.0
    for i, t in enumerate(range(first, last)):
        owed += per_tick
        r = int(owed)
        owed -= r
        if r:
            out.append((t, callers + i % keys, r))
    return np.array(out, np.int64).reshape(-1, 3)


def population_runs(world: World, pop: Population, seed: int, multipliers: tuple[float, ...],
                    hours: int = 48) -> tuple[Plan, list[PopulationRun]]:
    """The cold start alone, the steady population alone, then each thief on a copy of the
    warmed-up monitor."""
    days = 2 * math.ceil(hours / 24)
    plan = plan_population(pop, days, seed)
    warm_end = hours * 3600 // TICK
    warm = plan.events[plan.events[:, 0] < warm_end]
    rest = plan.events[(plan.events[:, 0] >= warm_end) & (plan.events[:, 0] < 2 * warm_end)]
    feeder = Feeder(world)
    monitor = volume_monitor(world)
    cold = PopulationRun("cold start (first 48 h, no thief)", 0.0, 0, 0.0)
    replay(monitor, plan, warm, feeder, cold, {}, 0)
    snapshot = monitor.snapshot()
    runs = [cold]
    scenarios = [("benign only", 0.0, 0)] + [
        (f"{m:g}x p99, {k} key{'s' if k > 1 else ''}", m, k)
        for m in multipliers for k in (1, SYBIL_KEYS)]
    for label, m, k in scenarios:
        mon = volume_monitor(world)
        mon.restore(snapshot)
        run = PopulationRun(label, m, k, m * plan.p99)
        thief: dict[int, tuple[str, str]] = {}
        events = rest
        if k:
            tenant = "thief-tenant"
            thief = {len(plan.keys) + i: (f"thief-{i}", tenant) for i in range(k)}
            te = thief_events(m * plan.p99, k, warm_end, 2 * warm_end, len(plan.keys))
            events = np.concatenate([rest, te])
            events = events[np.argsort(events[:, 0], kind="stable")]
        replay(mon, plan, events, feeder, run, thief, warm_end)
        runs.append(run)
    return plan, runs


# 2: coverage over a long horizon ----------------------------------------------------------


@dataclass
class CoverageResult:
    codebook: int  # cells of the fine codebook
    summary_cells: int
    rows: dict[str, dict[int, float]]  # stream -> n -> z of distinct fine cells vs iid
    summary_rows: dict[str, dict[int, float]]  # the same on the monitor's own codebook
    benign_at_or_above: dict[int, float]  # share of benign streams >= the Knockoff's coverage
    knockoff_max_risk: float  # the default monitor, all detectors, over the Knockoff stream
    knockoff_top: str
    benign_max_risk: float  # the same monitor over random-order benign streams (highest)
    benign_top: str


def _standardize(world: World, x: Array) -> Array:
    out: Array = (x - world.summary.mean) / world.summary.scale
    return out


def _assign(centroids: Array, z: Array) -> Array:
    d = (z * z).sum(1)[:, None] - 2 * z @ centroids.T + (centroids * centroids).sum(1)[None]
    return np.asarray(d.argmin(axis=1))


def benign_streams(world: World, n: int, rng: np.random.Generator, zpool: Array,
                   cells: Array, per: int) -> dict[str, list[Array]]:
    """Row indices into the pool for honest users, by behaviour."""
    m = len(zpool)
    lab = labels(world, world.pool_x)
    out: dict[str, list[Array]] = {k: [] for k in
                                   ("random order", "one class mostly", "one region", "drift",
                                    "re-reads")}
    for _ in range(per):
        out["random order"].append(_iid(rng, m, n))
        main = rng.choice(np.unique(lab))
        mine, other = np.nonzero(lab == main)[0], np.nonzero(lab != main)[0]
        pick = np.where(rng.random(n) < 0.7, rng.choice(mine, n),
                        rng.choice(other if len(other) else mine, n))
        out["one class mostly"].append(pick)
        anchor = zpool[rng.integers(m)]
        near = np.argsort(((zpool - anchor) ** 2).sum(1))[:max(50, m // 10)]
        out["one region"].append(rng.choice(near, n))
        proj = zpool @ rng.standard_normal(zpool.shape[1])
        order = np.argsort(proj)
        width = max(50, m // 10)
        centre = np.linspace(0, m - width, n).astype(int)
        out["drift"].append(order[centre + rng.integers(0, width, n)])
        work = rng.choice(m, min(m, 200), replace=False)
        out["re-reads"].append(rng.choice(work, n))
    return out


def _iid(rng: np.random.Generator, m: int, n: int) -> Array:
    """n draws from m rows: a permutation, another when it runs out (as a thief would)."""
    return np.concatenate([rng.permutation(m) for _ in range(math.ceil(n / m))])[:n]


def _balanced(rng: np.random.Generator, cells: Array, n: int) -> Array:
    """A coverage-seeking thief: round-robin over its own clusters of its pool."""
    groups = [list(rng.permutation(np.nonzero(cells == c)[0])) for c in np.unique(cells)]
    out: list[int] = []
    while len(out) < n:
        for g in groups:
            if g:
                out.append(int(g.pop()))
        if not any(groups):
            groups = [list(rng.permutation(np.nonzero(cells == c)[0]))
                      for c in np.unique(cells)]
    return np.array(out[:n])


def coverage(world: World, n: int, per: int, seed: int) -> CoverageResult:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    zref, zpool = _standardize(world, world.test_x), _standardize(world, world.pool_x)
    k = int(min(256, max(16, len(zref) // 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(zref)
    fine = np.asarray(km.cluster_centers_)
    freq = np.bincount(km.labels_, minlength=k) / len(zref)
    sfreq = world.summary.cell_freq
    fine_pool, coarse_pool = _assign(fine, zpool), _assign(world.summary.centroids, zpool)
    own = KMeans(n_clusters=k, n_init=1, random_state=seed + 1).fit(zpool).labels_
    streams: dict[str, list[Array]] = {"Knockoff (thief)": [_iid(rng, len(zpool), n)],
                                       "coverage-seeking (thief)": [_balanced(rng, own, n)]}
    benign = benign_streams(world, n, rng, zpool, fine_pool, per)
    streams.update(benign)
    at = [a for a in COVERAGE_AT if a <= n]
    expect = {a: expected_distinct(freq, a) for a in at}
    sexpect = {a: expected_distinct(sfreq, a) for a in at}

    def z_of(idx: Array, cells: Array, ex: dict[int, tuple[float, float]]) -> dict[int, Array]:
        # a standard deviation under half a cell means the iid count is all but certain
        return {a: np.array((len(np.unique(cells[idx[:a]])) - ex[a][0]) / max(ex[a][1], 0.5))
                for a in at}

    rows: dict[str, dict[int, float]] = {}
    srows: dict[str, dict[int, float]] = {}
    zs: dict[str, list[dict[int, Array]]] = {}
    for name, lst in streams.items():
        zs[name] = [z_of(i, fine_pool, expect) for i in lst]
        rows[name] = {a: float(np.median([z[a] for z in zs[name]])) for a in at}
        sz = [z_of(i, coarse_pool, sexpect) for i in lst]
        srows[name] = {a: float(np.median([z[a] for z in sz])) for a in at}
    thief = zs["Knockoff (thief)"][0]
    allb = [z for name in benign for z in zs[name]]
    share = {a: float(np.mean([z[a] >= thief[a] for z in allb])) for a in at}
    risk, top = monitor_risk(world, streams["Knockoff (thief)"][0])
    brisk, btop = max(monitor_risk(world, i) for i in streams["random order"][:2])
    return CoverageResult(k, len(sfreq), rows, srows, share, risk, top, brisk, btop)


def monitor_risk(world: World, idx: Array) -> tuple[float, str]:
    """The default monitor's highest risk over one stream of pool rows (10-row requests)."""
    monitor = Monitor(world.summary)
    x = world.pool_x[idx]
    p = world.victim.ask(x).proba
    assert p is not None
    best, top = 0.0, "-"
    for i in range(0, len(x), 10):
        monitor.observe("thief", x[i:i + 10], p[i:i + 10], now=float(EPOCH + i))
        r = monitor.risk("thief")
        if r.score > best:
            best = r.score
            top = max(r.readings, key=lambda k: r.readings[k].score)
    return best, top


# 4: what a budget leaves a Knockoff thief -------------------------------------------------


@dataclass
class BudgetResult:
    pool: int
    curve: dict[int, float]  # queries -> fidelity
    undefended: float  # fidelity with the whole pool
    majority: float  # agreement of always answering the victim's most common class
    budget: int  # the daily budget at the population's 99.9th percentile caller-day
    at_budget: float  # fidelity with min(budget, pool) rows
    to_90: int | None  # fewest curve queries reaching 90% of the undefended gain
    to_95: int | None

    def share(self, f: float) -> float:
        """How much of the undefended gain over the majority answer fidelity `f` reaches."""
        gain = self.undefended - self.majority
        return 1.0 if gain <= 0 else (f - self.majority) / gain


def fidelity(world: World, idx: Array, truth: Array, seed: int) -> float:
    x = world.pool_x[idx]
    y = labels(world, x)
    thief = make_thief("mlp", seed).fit(x, y, None, world.victim.n_classes)
    return float(np.mean(thief.predict(world.test_x) == truth))


def budgets(world: World, budget: int, sizes: tuple[int, ...], seed: int) -> BudgetResult:
    rng = np.random.default_rng(seed)
    m = len(world.pool_x)
    order = rng.permutation(m)
    truth = labels(world, world.test_x)
    majority = float(np.bincount(truth).max() / len(truth))
    curve = {s: fidelity(world, order[:s], truth, seed) for s in sizes if s < m}
    full = fidelity(world, order, truth, seed)
    at_budget = full if budget >= m else fidelity(world, order[:budget], truth, seed)
    out = BudgetResult(m, curve, full, majority, budget, at_budget, None, None)
    for share in (0.9, 0.95):
        hit = [s for s, f in sorted(curve.items()) if out.share(f) >= share]
        setattr(out, "to_90" if share == 0.9 else "to_95", hit[0] if hit else None)
    return out


# report -----------------------------------------------------------------------------------


def _h(v: float | None, q: int | None) -> str:
    return "never" if v is None or q is None else f"{v:.1f} h, {q:,} q"


def population_table(seed: int, plan: Plan, runs: list[PopulationRun]) -> list[str]:
    heavy = int(plan.batch.sum())
    out = [f"population {seed}: {len(plan.keys)} callers ({heavy} batch scorers) in "
           f"{len(set(plan.tenants))} tenants, 99th percentile {plan.p99:,.0f} queries/day", "",
           "| scenario | thief/day | key flagged (after, queries) | tenant flagged | thief "
           "score (key / tenant) | benign flagged (batch) | benign tenants flagged | benign "
           "max score | benign scored > 0 |", "|---|---:|---|---|---|---:|---:|---:|---:|"]
    for r in runs:
        out.append(f"| {r.scenario} | {r.thief_daily:,.0f} | {_h(r.key_flagged_h, r.key_flagged_q)}"
                   f" | {_h(r.tenant_flagged_h, r.tenant_flagged_q)} | {r.thief_score:.2f} / "
                   f"{r.thief_tenant_score:.2f} | {len(r.benign_flagged)} "
                   f"({r.benign_flagged_batch}) | {len(r.benign_tenants_flagged)} | "
                   f"{r.benign_max_score:.2f} | {r.benign_scored} |")
    return out


def coverage_table(name: str, c: CoverageResult) -> list[str]:
    at = list(c.benign_at_or_above)
    out = [f"**{name}**: fine codebook {c.codebook} cells (monitor's own: {c.summary_cells}); "
           f"default monitor's highest risk: Knockoff {c.knockoff_max_risk:.2f} ({c.knockoff_top}),"
           f" random-order users {c.benign_max_risk:.2f} ({c.benign_top})", "",
           "| stream | " + " | ".join(f"z at {a:,}" for a in at) + " | z at "
           f"{at[-1]:,}, monitor's cells |", "|---|" + "---:|" * (len(at) + 1)]
    for s, zs in c.rows.items():
        out.append(f"| {s} | " + " | ".join(f"{zs[a]:+.1f}" for a in at)
                   + f" | {c.summary_rows[s][at[-1]]:+.1f} |")
    out.append("| benign streams at or above the Knockoff's coverage | "
               + " | ".join(f"{c.benign_at_or_above[a]:.0%}" for a in at) + " | |")
    return out


def budget_table(results: dict[str, BudgetResult]) -> list[str]:
    sizes = sorted({s for r in results.values() for s in r.curve})
    out = ["| victim | pool | majority | " + " | ".join(f"{s:,}" for s in sizes)
           + " | whole pool (undefended) | 90% at | 95% at | daily budget | share at budget |",
           "|---|---:|---:|" + "---:|" * (len(sizes) + 5)]
    for name, r in results.items():
        cells = [f"{r.curve[s]:.3f} ({r.share(r.curve[s]):.0%})" if s in r.curve else "—"
                 for s in sizes]
        most = f">{max(r.curve, default=0):,}"
        out.append(f"| {name} | {r.pool:,} | {r.majority:.3f} | " + " | ".join(cells)
                   + f" | {r.undefended:.3f} | {r.to_90 or most} | {r.to_95 or most} | "
                   f"{r.budget:,} | {r.share(r.at_budget):.0%} |")
    shares = {s: [r.share(r.curve[s]) for r in results.values() if s in r.curve] for s in sizes}
    at = [r.share(r.at_budget) for r in results.values()]
    out.append("| **median / worst** | | | " + " | ".join(
        f"{np.median(v):.0%} / {min(v):.0%}" if v else "—" for v in shares.values())
        + f" | | | | | {np.median(at):.0%} / {min(at):.0%} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victims", default="4",
                    help="corpus victim names, or N: N test-half victims, one per family first")
    ap.add_argument("--populations", type=int, default=1)
    ap.add_argument("--callers", type=int, default=120)
    ap.add_argument("--multipliers", default=",".join(f"{m:g}" for m in MULTIPLIERS))
    ap.add_argument("--coverage-queries", type=int, default=2000)
    ap.add_argument("--benign-per-behaviour", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 victims, small sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    started = time.perf_counter()
    names = spread(int(a.victims)) if a.victims.isdigit() else a.victims.split(",")
    pop = Population(callers=a.callers)
    sizes: tuple[int, ...] = CURVE
    cov_n, per, pops = a.coverage_queries, a.benign_per_behaviour, a.populations
    if a.quick:
        names, sizes, cov_n, per, pops = names[:2], CURVE[:5], 1000, 2, 1
        pop = Population(callers=60, tenants=15)
    mult = tuple(float(m) for m in a.multipliers.split(","))
    worlds = load_worlds(names, a.seed)
    took = {"worlds": time.perf_counter() - started}
    mark = time.perf_counter()

    def lap(what: str) -> None:
        nonlocal mark
        took[what] = time.perf_counter() - mark
        mark = time.perf_counter()
    print(f"# Natural-data Knockoff thieves\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; victims "
          f"{', '.join(names)}\n")

    print("## 1 + 3. Volume against peers (principal and tenant), one monitor, volume only\n")
    pop_doc = []
    for i in range(pops):
        plan, runs = population_runs(worlds[i % len(worlds)], pop, a.seed + i, mult)
        print("\n".join(population_table(i, plan, runs)) + "\n")
        pop_doc.append({"seed": a.seed + i, "p99": plan.p99, "callers": len(plan.keys),
                        "batch": int(plan.batch.sum()), "runs": [asdict(r) for r in runs]})

    lap("volume")
    print("## 2. Coverage over a long horizon (z of distinct cells vs iid draws, median "
          "over streams)\n")
    cov = {}
    for w in worlds:
        cov[w.name] = coverage(w, cov_n, per, a.seed)
        print("\n".join(coverage_table(w.name, cov[w.name])) + "\n")
    last = max(a for a in COVERAGE_AT if a <= cov_n)
    shares = [c.benign_at_or_above[last] for c in cov.values()]
    print(f"Benign streams at or above the Knockoff's coverage at {last:,} queries: median "
          f"{np.median(shares):.0%}, lowest {min(shares):.0%} across victims.\n")

    lap("coverage")
    print("## 4. Budgets: label-only MLP copy's fidelity vs natural queries (in brackets: "
          "share of the undefended gain over always answering the majority class)\n")
    budget = int(pop.budget(0.999, a.seed))
    bud = {w.name: budgets(w, budget, sizes, a.seed) for w in worlds}
    print(f"Daily per-key budget at the population's 99.9th-percentile caller-day: {budget:,} "
          f"queries (median caller {pop.median:g}/day; batch scorers x{pop.batch_factor:g}).\n")
    print("\n".join(budget_table(bud)) + "\n")
    lap("budgets")

    steady = [r for d in pop_doc for r in d["runs"] if r["scenario"] != "cold start (first 48 h, "
              "no thief)"]
    flagged = {m: [r["key_flagged_h"] for r in steady if r["multiplier"] == m and r["keys"] == 1]
               for m in mult}
    tflag = {m: [r["tenant_flagged_h"] for r in steady if r["multiplier"] == m
                 and r["keys"] == SYBIL_KEYS] for m in mult}

    def when(v: list[float | None]) -> str:
        hit = [h for h in v if h is not None]
        if not hit:
            return "never"
        span = f"{min(hit):.0f}" + ("" if round(min(hit)) == round(max(hit))
                                    else f"-{max(hit):.0f}")
        return f"{span} h" + (
            "" if len(hit) == len(v) else f" ({len(hit)}/{len(v)})")

    benign = sum(len(r["benign_flagged"]) for r in steady)
    cold = sum(len(d["runs"][0]["benign_flagged"]) for d in pop_doc)
    print("**Summary**: volume flags the natural thief's key at "
          + ", ".join(f"{m:g}x p99: {when(v)}" for m, v in flagged.items())
          + f" (benign callers flagged after the cold start: {benign}; during it: {cold}); "
          "its 10-key tenant at " + ", ".join(f"{m:g}x: {when(v)}" for m, v in tflag.items())
          + f"; long-horizon coverage does not separate it (median {np.median(shares):.0%} of "
          f"benign streams cover as much); a daily budget at the 99.9th percentile ({budget:,}) "
          f"leaves it {np.median([r.share(r.at_budget) for r in bud.values()]):.0%} of its "
          "undefended fidelity gain (median over victims; 95% of it takes a median "
          f"{np.median([r.to_95 or r.pool for r in bud.values()]):,.0f} queries, "
          f"{np.median([r.to_95 or r.pool for r in bud.values()]) / pop.median:.0f} days of a "
          "median caller); the watermark proves the theft afterwards.")
    elapsed = time.perf_counter() - started
    print(f"\n({elapsed:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()) + ")")
    if a.json:
        import json

        doc = {"victims": names, "population": asdict(pop), "budget": budget,
               "populations": pop_doc,
               "coverage": {k: asdict(v) for k, v in cov.items()},
               "budgets": {k: asdict(v) for k, v in bud.items()}, "elapsed_s": elapsed,
               "took_s": took}
        a.json.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
