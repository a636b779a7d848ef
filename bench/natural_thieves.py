"""Natural-data Knockoff: which signals still see a thief that sends what users send.

A Knockoff thief holding clean rows from the model's own distribution asks exactly what a
benign user of that data asks, so no per-query detector can tell the two apart. What is
left is *how much* it asks and what the product does about how much. This bench measures
each remaining signal on several corpus victims (`modelfence.monitor.corpus.victims`):

1. **Volume against peers**: the monitor's volume detector and its shared `PeerStats` for
   principals and tenants (`VolumeFeed`, equal to a volume-only `Monitor`, which
   `--through-monitor` runs instead, 40 times slower), fed a population of benign callers
   with heavy-tailed daily volumes (lognormal; a tenth are nightly batch scorers ten times
   heavier; some live one day only) for a 48-hour warm-up, then for 48 more hours with one
   thief sending 5x, 20x, 100x the population's 99th-percentile daily volume, steadily.
   Reported: when (hours after it started, queries sent) the thief's key and its tenant are
   flagged, and how many benign callers and tenants are flagged, during the cold start and
   after it.
2. **Coverage over time**: distinct cells of a fine k-means codebook (fitted on rows nobody
   queries) that a caller's first n rows reach, as a z-score against iid draws, for the
   corpus's natural-data Knockoff thief, a coverage-seeking thief (round-robin over its own
   clusters of its pool), the corpus's test-half honest behaviours (one key each) and a user
   of one region of the data; and the share of honest streams that any long-horizon
   coverage threshold catching the thief would flag. Also the recommended monitor's highest
   risk (all detectors) for the Knockoff thief and for random-order users.
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

    python bench/natural_thieves.py [--victims N|name,name] [--callers 50,120,200]
        [--populations SEEDS] [--multipliers 5,20,100] [--through-monitor] [--quick]
        [--json PATH]

Defaults: 4 test-half victims (one per model family), populations of 50, 120 and 200
callers, 2 seeds each; under 3 minutes on the 2-core machine. --quick is a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from modelfence.monitor.corpus.victims import CorpusWorld
from modelfence.monitor.detectors import PeerStats, VolumeVelocity
from modelfence.monitor.score import Monitor, MonitorSettings
from modelfence.monitor.summary import Array, Summary, expected_distinct
from modelfence.redteam.thieves import make_thief
from modelfence.redteam.victims import LocalVictim
from modelfence.shaping.recommended import RECOMMENDED_MONITOR

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
    corpus: CorpusWorld


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
        out.append(World(name, w.victim, w.summary, w.pool_x, w.pool_y, w.test_x, w.accuracy,
                         w))
    return out


def recommended(**override: object) -> MonitorSettings:
    """README's recommended monitor settings (what the corpus measures), with `override`."""
    return MonitorSettings(**{**RECOMMENDED_MONITOR, **override})


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


class Feed(Protocol):
    """Where the population's queries go; `observe` returns the (principal, tenant) risk."""

    threshold: float

    def observe(self, key: str, tenant: str, n: int, now: float) -> tuple[float, float]: ...

    def copy(self) -> Feed: ...


class VolumeFeed:
    """The monitor's volume detector and its two peer tables (principals, tenants), fed
    counts. `Monitor.observe` runs re-send filtering on every row before any detector (some
    20 us a row, paid here for hundreds of thousands of thief rows), and the volume detector
    sees every row anyway and reads only how many: so a volume-only monitor's risk is this
    detector's score. `--through-monitor` runs the real `Monitor` instead to check that."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary
        self.threshold = recommended().threshold
        self.tables: dict[str, tuple[PeerStats, dict[str, VolumeVelocity]]] = {
            "principal": (PeerStats(), {}), "tenant": (PeerStats(), {})}

    def observe(self, key: str, tenant: str, n: int, now: float) -> tuple[float, float]:
        rows = np.empty((n, 0))
        out = []
        for kind, k in (("principal", key), ("tenant", tenant)):
            peers, dets = self.tables[kind]
            det = dets.get(k)
            if det is None:
                det = dets[k] = VolumeVelocity(self.summary, peers=peers, key=k)
            det.observe(rows, rows, now)
            out.append(det.score().score)
        return out[0], out[1]

    def copy(self) -> VolumeFeed:
        return copy.deepcopy(self)


class MonitorFeed:
    """A `Monitor` with the volume detector only, fed pool rows and their probabilities."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.monitor = Monitor(world.summary, recommended(detectors=("volume",)))
        self.threshold = self.monitor.settings.threshold
        self.x = world.pool_x
        proba = world.victim.ask(self.x).proba
        assert proba is not None
        self.p = proba
        self.at = 0

    def observe(self, key: str, tenant: str, n: int, now: float) -> tuple[float, float]:
        idx = (self.at + np.arange(n)) % len(self.x)
        self.at = int((self.at + n) % len(self.x))
        self.monitor.observe(key, self.x[idx], self.p[idx], tenant=tenant, now=now)
        return self.monitor.peek(key), self.monitor.peek_tenant(tenant)

    def copy(self) -> MonitorFeed:
        out = MonitorFeed.__new__(MonitorFeed)
        out.__dict__.update(self.__dict__)
        out.monitor = Monitor(self.world.summary, self.monitor.settings)
        out.monitor.restore(self.monitor.snapshot())
        return out


def replay(feed: Feed, plan: Plan, events: Array, run: PopulationRun,
           thief: dict[int, tuple[str, str]], start_tick: int) -> None:
    """Feed `events` (caller ids >= callers are thief keys in `thief`) and record flags."""
    threshold = feed.threshold
    n = len(plan.keys)
    thief_q = 0
    scored: set[str] = set()
    for t, c, r in events.tolist():
        if c >= n and run.key_flagged_h is not None and run.tenant_flagged_h is not None:
            continue  # both flagged: the rest of its rows would change nothing measured
        key, tenant = thief[c] if c >= n else (plan.keys[c], plan.tenants[c])
        own, ten = feed.observe(key, tenant, r, float(EPOCH + t * TICK + 30))
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
                    hours: int = 48, through_monitor: bool = False
                    ) -> tuple[Plan, list[PopulationRun]]:
    """The cold start alone, the steady population alone, then each thief on a copy of the
    warmed-up monitor."""
    days = 2 * math.ceil(hours / 24)
    plan = plan_population(pop, days, seed)
    warm_end = hours * 3600 // TICK
    warm = plan.events[plan.events[:, 0] < warm_end]
    rest = plan.events[(plan.events[:, 0] >= warm_end) & (plan.events[:, 0] < 2 * warm_end)]
    warmed: Feed = MonitorFeed(world) if through_monitor else VolumeFeed(world.summary)
    cold = PopulationRun("cold start (first 48 h, no thief)", 0.0, 0, 0.0)
    replay(warmed, plan, warm, cold, {}, 0)
    runs = [cold]
    scenarios = [("benign only", 0.0, 0)] + [
        (f"{m:g}x p99, {k} key{'s' if k > 1 else ''}", m, k)
        for m in multipliers for k in (1, SYBIL_KEYS)]
    for label, m, k in scenarios:
        run = PopulationRun(label, m, k, m * plan.p99)
        thief: dict[int, tuple[str, str]] = {}
        events = rest
        if k:
            tenant = "thief-tenant"
            thief = {len(plan.keys) + i: (f"thief-{i}", tenant) for i in range(k)}
            te = thief_events(m * plan.p99, k, warm_end, 2 * warm_end, len(plan.keys))
            events = np.concatenate([rest, te])
            events = events[np.argsort(events[:, 0], kind="stable")]
        replay(warmed.copy(), plan, events, run, thief, warm_end)
        runs.append(run)
    return plan, runs


@dataclass(frozen=True)
class TenantAlternative:
    """What if a tenant's 48-hour volume were judged against *principals'* 99th percentile
    (the volume detector compares tenants with tenants): computed from the plan, not the
    monitor."""

    principal_p99: float  # 99th percentile of benign callers' volume in the measured 48 h
    benign_max_ratio: float  # the largest benign tenant's volume over it
    benign_over: int  # benign tenants beyond the detector's 20x
    thief_hours: dict[float, float | None]  # multiplier -> hours until the 10-key tenant is


def tenant_alternative(plan: Plan, hours: int, multipliers: tuple[float, ...]
                       ) -> TenantAlternative:
    start = hours * 3600 // TICK
    main = plan.events[(plan.events[:, 0] >= start) & (plan.events[:, 0] < 2 * start)]
    per = np.bincount(main[:, 1], weights=main[:, 2], minlength=len(plan.keys))
    p99 = float(np.quantile(per, 0.99))
    tenants: dict[str, float] = {}
    for c, v in enumerate(per.tolist()):
        tenants[plan.tenants[c]] = tenants.get(plan.tenants[c], 0.0) + v
    extreme = 20.0  # VolumeVelocity.EXTREME
    ratios = np.array(list(tenants.values())) / max(p99, 1.0)
    need = {m: extreme * p99 / (m * plan.p99 / 24) for m in multipliers}
    return TenantAlternative(p99, float(ratios.max()), int((ratios > extreme).sum()),
                             {m: (h if h <= hours else None) for m, h in need.items()})


# 2: coverage over a long horizon ----------------------------------------------------------


@dataclass
class CoverageResult:
    codebook: int  # cells of the fine codebook
    summary_cells: int
    rows: dict[str, dict[int, float]]  # stream -> n -> z of distinct fine cells vs iid
    summary_rows: dict[str, dict[int, float]]  # the same on the monitor's own codebook
    benign_at_or_above: dict[int, float]  # share of honest streams >= a Knockoff's coverage
    # (averaged over the Knockoff streams)
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


def corpus_streams(world: World, n: int, per: int, seed: int) -> dict[str, list[Array]]:
    """Rows of the corpus's test-half honest behaviours (one key each), `per` streams each,
    and the corpus's natural-data Knockoff thief."""
    from modelfence.monitor.corpus.behaviours import BEHAVIOURS, generate

    out: dict[str, list[Array]] = {}
    for b in BEHAVIOURS:
        if b.half != "test" or not (b.side == "benign" or b.family == "knockoff"):
            continue
        for j in range(per):
            stream = generate(b, world.corpus, n, seed + j)
            if len(set(stream.principals)) > 1:
                continue  # short-lived keys: no long horizon to measure
            name = "Knockoff (thief)" if b.side == "thief" else b.name
            out.setdefault(name, []).append(np.asarray(stream.x))
    return out


def one_region(world: World, n: int, per: int, rng: np.random.Generator) -> list[Array]:
    """A user whose customers are alike (one branch, one kind of device): the nearest tenth
    of the pool around a random row, in random order. Not a corpus behaviour."""
    z = _standardize(world, world.pool_x)
    out = []
    for _ in range(per):
        near = np.argsort(((z - z[rng.integers(len(z))]) ** 2).sum(1))[:max(50, len(z) // 10)]
        out.append(world.pool_x[rng.choice(near, n)])
    return out


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
        own = KMeans(n_clusters=k, n_init=1, random_state=seed + 1).fit(zpool).labels_
    fine = np.asarray(km.cluster_centers_)
    freq = np.bincount(km.labels_, minlength=k) / len(zref)
    sfreq = world.summary.cell_freq
    streams = corpus_streams(world, n, per, seed)
    thief_x = streams.pop("Knockoff (thief)")
    benign = {**streams, "one region (not in the corpus)": one_region(world, n, per, rng)}
    streams = {"Knockoff (thief)": thief_x,
               "coverage-seeking (thief)": [world.pool_x[_balanced(rng, own, n)]], **benign}
    at = [a for a in COVERAGE_AT if a <= n]
    expect = {a: expected_distinct(freq, a) for a in at}
    sexpect = {a: expected_distinct(sfreq, a) for a in at}

    def z_of(x: Array, centroids: Array, ex: dict[int, tuple[float, float]]
             ) -> dict[int, float]:
        cells = _assign(centroids, _standardize(world, x))
        # a standard deviation under half a cell means the iid count is all but certain
        return {a: (len(np.unique(cells[:a])) - ex[a][0]) / max(ex[a][1], 0.5) for a in at}

    rows: dict[str, dict[int, float]] = {}
    srows: dict[str, dict[int, float]] = {}
    zs: dict[str, list[dict[int, float]]] = {}
    for name, lst in streams.items():
        zs[name] = [z_of(x, fine, expect) for x in lst]
        rows[name] = {a: float(np.median([z[a] for z in zs[name]])) for a in at}
        sz = [z_of(x, world.summary.centroids, sexpect) for x in lst]
        srows[name] = {a: float(np.median([z[a] for z in sz])) for a in at}
    allb = [z for name in benign for z in zs[name]]
    share = {a: float(np.mean([[z[a] >= thief[a] for z in allb]
                               for thief in zs["Knockoff (thief)"]])) for a in at}
    risk, top = monitor_risk(world, thief_x[0])
    randoms = [x for name, lst in benign.items() if name.startswith("random-order") for x in lst]
    brisk, btop = max(monitor_risk(world, x) for x in randoms[:2])
    return CoverageResult(k, len(sfreq), rows, srows, share, risk, top, brisk, btop)


def monitor_risk(world: World, x: Array) -> tuple[float, str]:
    """The recommended monitor's highest risk over one stream (10-row requests, 1 s apart)."""
    monitor = Monitor(world.summary, recommended())
    p = world.victim.ask(x).proba
    assert p is not None
    best, top = 0.0, "-"
    for i in range(0, len(x), 10):
        monitor.observe("caller", x[i:i + 10], p[i:i + 10], now=float(EPOCH + i))
        r = monitor.risk("caller")
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


@dataclass
class PopulationResult:
    label: str
    callers: int
    batch: int
    tenants: int
    p99: float
    runs: list[PopulationRun]
    alternative: TenantAlternative

    def run(self, multiplier: float, keys: int) -> PopulationRun:
        return next(r for r in self.runs if r.multiplier == multiplier and r.keys == keys)


def benign_table(results: list[PopulationResult]) -> list[str]:
    out = ["| population | callers (batch scorers) | tenants | 99th pct/day | flagged in the "
           "cold start: callers / tenants | flagged after it: callers / tenants | highest "
           "benign score | callers scored > 0 | largest tenant / principals' 99th pct |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in results:
        cold, steady = p.runs[0], p.runs[1:]
        callers = {k for r in steady for k in r.benign_flagged}
        tenants = {k for r in steady for k in r.benign_tenants_flagged}
        out.append(f"| {p.label} | {p.callers} ({p.batch}) | {p.tenants} | {p.p99:,.0f} | "
                   f"{len(cold.benign_flagged)} / {len(cold.benign_tenants_flagged)} | "
                   f"{len(callers)} / {len(tenants)} | "
                   f"{max(r.benign_max_score for r in p.runs):.2f} | "
                   f"{max(r.benign_scored for r in steady)} | "
                   f"{p.alternative.benign_max_ratio:.1f}x |")
    return out


def thief_table(results: list[PopulationResult], mult: tuple[float, ...]) -> list[str]:
    out = ["| population | thief | per day | 1 key: flagged (after, queries) | 1 key: its "
           "tenant | 10 keys: any key | 10 keys: the tenant | 10 keys: tenant vs principals' "
           "99th pct |", "|---|---|---:|---|---|---|---|---|"]
    for p in results:
        for m in mult:
            one, ten = p.run(m, 1), p.run(m, SYBIL_KEYS)
            alt = p.alternative.thief_hours[m]
            out.append(f"| {p.label} | {m:g}x | {one.thief_daily:,.0f} | "
                       f"{_h(one.key_flagged_h, one.key_flagged_q)} | "
                       f"{_h(one.tenant_flagged_h, one.tenant_flagged_q)} | "
                       f"{_h(ten.key_flagged_h, ten.key_flagged_q)} | "
                       f"{_h(ten.tenant_flagged_h, ten.tenant_flagged_q)} | "
                       + ("never" if alt is None else f"{alt:.1f} h (computed)") + " |")
    out += ["", "| thief | 1 key flagged: median / worst (populations) | 10 keys, tenant "
            "flagged: median / worst |", "|---|---|---|"]
    for m in mult:
        out.append(f"| {m:g}x | " + " | ".join(
            _median_worst([p.run(m, k).key_flagged_h if k == 1 else p.run(m, k).tenant_flagged_h
                           for p in results]) for k in (1, SYBIL_KEYS)) + " |")
    return out


def _median_worst(hours: list[float | None]) -> str:
    """Median and worst (latest; never counts as latest) of first-flag hours."""
    inf = [math.inf if h is None else h for h in hours]
    med, worst = float(np.median(inf)), max(inf)
    return " / ".join("never" if math.isinf(v) else f"{v:.1f} h" for v in (med, worst))


def coverage_table(name: str, c: CoverageResult) -> list[str]:
    at = list(c.benign_at_or_above)
    out = [f"**{name}**: fine codebook {c.codebook} cells (monitor's own: {c.summary_cells}); "
           "recommended monitor's highest risk: Knockoff "
           f"{c.knockoff_max_risk:.2f} ({c.knockoff_top}), random-order users "
           f"{c.benign_max_risk:.2f} ({c.benign_top})", "",
           "| stream | " + " | ".join(f"z at {a:,}" for a in at) + " | z at "
           f"{at[-1]:,}, monitor's cells |", "|---|" + "---:|" * (len(at) + 1)]
    for s, zs in c.rows.items():
        out.append(f"| {s} | " + " | ".join(f"{zs[a]:+.1f}" for a in at)
                   + f" | {c.summary_rows[s][at[-1]]:+.1f} |")
    out.append("| benign streams at or above the Knockoff's coverage | "
               + " | ".join(f"{c.benign_at_or_above[a]:.0%}" for a in at) + " | |")
    return out


def coverage_summary(cov: dict[str, CoverageResult]) -> list[str]:
    """Across victims: the thief against honest streams, and what catching it would cost."""
    at = sorted({a for c in cov.values() for a in c.benign_at_or_above})
    out = ["| victim | codebook | Knockoff z / random-order z at "
           f"{at[-1]:,} | " + " | ".join(f"honest at or above it at {a:,}" for a in at) + " |",
           "|---|---:|---|" + "---:|" * len(at)]
    for name, c in cov.items():
        rnd = [z[at[-1]] for s, z in c.rows.items() if s.startswith("random-order")]
        out.append(f"| {name} | {c.codebook} | {c.rows['Knockoff (thief)'][at[-1]]:+.1f} / "
                   f"{np.median(rnd):+.1f} | "
                   + " | ".join(f"{c.benign_at_or_above.get(a, math.nan):.0%}" for a in at)
                   + " |")
    out.append("| **median / lowest** | | | " + " | ".join(
        f"{np.median(v):.0%} / {min(v):.0%}" for v in
        ([c.benign_at_or_above[a] for c in cov.values() if a in c.benign_at_or_above]
         for a in at)) + " |")
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


def summary_line(results: list[PopulationResult], mult: tuple[float, ...],
                 shares: list[float], bud: dict[str, BudgetResult], budget: int,
                 pop: Population) -> str:
    """Which signal catches the natural thief when, and what each costs honest callers."""
    steady = [r for p in results for r in p.runs[1:]]  # runs[0] is the cold start
    benign = sum(len(r.benign_flagged) + len(r.benign_tenants_flagged) for r in steady)
    cold = sum(len(p.runs[0].benign_flagged) + len(p.runs[0].benign_tenants_flagged)
               for p in results)
    p99 = float(np.median([p.p99 for p in results]))
    need = float(np.median([r.to_95 or r.pool for r in bud.values()]))
    left = float(np.median([r.share(r.at_budget) for r in bud.values()]))
    return (
        "**Summary**: volume against peers flags the natural thief's key (median / worst over "
        f"{len(results)} populations) at "
        + ", ".join(f"{m:g}x the 99th percentile: "
                    + _median_worst([p.run(m, 1).key_flagged_h for p in results])
                    for m in mult)
        + "; split over 10 keys, its tenant at "
        + ", ".join(f"{m:g}x: " + _median_worst([p.run(m, SYBIL_KEYS).tenant_flagged_h
                                                 for p in results]) for m in mult)
        + f" (benign callers and tenants flagged: {benign} after the cold start, {cold} during "
        f"it). But the thief needs no such volume: 95% of its undefended fidelity gain takes a "
        f"median {need:,.0f} queries, {need / p99:.2f} of one 99th-percentile caller's day. "
        f"Long-horizon coverage does not separate it (median {np.median(shares):.0%} of benign "
        f"streams cover as much). A daily per-key budget at the 99.9th-percentile caller-day "
        f"({budget:,}) leaves it {left:.0%} of that gain (median over victims); only a "
        f"lifetime budget near {need:,.0f} queries per key ({need / pop.median:.0f} days of a "
        "median caller) would bite. What remains is proof afterwards: the watermark.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victims", default="4",
                    help="corpus victim names, or N: N test-half victims, one per family first")
    ap.add_argument("--populations", type=int, default=2, help="seeds per population size")
    ap.add_argument("--callers", default="50,120,200", help="population sizes")
    ap.add_argument("--multipliers", default=",".join(f"{m:g}" for m in MULTIPLIERS))
    ap.add_argument("--coverage-queries", type=int, default=2000)
    ap.add_argument("--benign-per-behaviour", type=int, default=4)
    ap.add_argument("--through-monitor", action="store_true",
                    help="volume: feed rows through Monitor.observe (slow) instead of counts")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 victims, small sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    started = time.perf_counter()
    names = spread(int(a.victims)) if a.victims.isdigit() else a.victims.split(",")
    pop = Population()
    callers = [int(c) for c in a.callers.split(",")]
    sizes: tuple[int, ...] = CURVE
    cov_n, per, pops = a.coverage_queries, a.benign_per_behaviour, a.populations
    if a.quick:
        names, sizes, cov_n, per, pops = names[:2], CURVE[:5], 1000, 2, 1
        callers = callers[:1]
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

    print("## 1 + 3. Volume against peers: principals and tenants, the volume detector\n")
    populations = []
    for size in callers:
        for i in range(pops):
            pop_i = replace(pop, callers=size, tenants=max(5, size // 4))
            plan, runs = population_runs(worlds[0], pop_i, a.seed + i, mult,
                                         through_monitor=a.through_monitor)
            populations.append(PopulationResult(
                f"{size}-{i}", size, int(plan.batch.sum()), len(set(plan.tenants)), plan.p99,
                runs, tenant_alternative(plan, 48, mult)))
    print("Benign callers: never flagged is the target (the cold start is the monitor's first "
          "48 hours, with no peer history)\n")
    print("\n".join(benign_table(populations)) + "\n")
    print("A steady natural-data thief joining the warmed-up population for 48 hours, at "
          "multiples of its 99th-percentile daily volume (the last column: computed, what a "
          "tenant judged against principals' 99th percentile would give)\n")
    print("\n".join(thief_table(populations, mult)) + "\n")
    lap("volume")
    print("## 2. Coverage over a long horizon (z of distinct cells vs iid draws, median "
          "over streams)\n")
    cov = {}
    for w in worlds:
        cov[w.name] = coverage(w, cov_n, per, a.seed)
        print("\n".join(coverage_table(w.name, cov[w.name])) + "\n")
    last = max(a for a in COVERAGE_AT if a <= cov_n)
    shares = [c.benign_at_or_above[last] for c in cov.values()]
    print("Across victims: the share of honest streams whose coverage is at or above the "
          "Knockoff thief's (what a long-horizon coverage threshold that flags it would flag)"
          "\n")
    print("\n".join(coverage_summary(cov)) + "\n")

    lap("coverage")
    print("## 4. Budgets: label-only MLP copy's fidelity vs natural queries (in brackets: "
          "share of the undefended gain over always answering the majority class)\n")
    budget = int(pop.budget(0.999, a.seed))
    bud = {w.name: budgets(w, budget, sizes, a.seed) for w in worlds}
    print(f"Daily per-key budget at the population's 99.9th-percentile caller-day: {budget:,} "
          f"queries (median caller {pop.median:g}/day; batch scorers x{pop.batch_factor:g}).\n")
    print("\n".join(budget_table(bud)) + "\n")
    lap("budgets")

    print(summary_line(populations, mult, shares, bud, budget, pop))
    elapsed = time.perf_counter() - started
    print(f"\n({elapsed:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()) + ")")
    if a.json:
        import json

        doc = {"victims": names, "population": asdict(pop), "budget": budget,
               "populations": [asdict(p) for p in populations],
               "coverage": {k: asdict(v) for k, v in cov.items()},
               "budgets": {k: asdict(v) for k, v in bud.items()}, "elapsed_s": elapsed,
               "took_s": took}
        a.json.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
