"""Run the corpus: every (victim, behaviour, seed) cell through the recommended gateway.

A cell builds its victim's world (once per worker process), generates the caller's stream,
asks the model for every row at once, replays the stream through `harness.Gateway`, and
measures what the issue's targets need, returning a small `CellResult`:

- every caller: when it was first flagged (for a Sybil split, its tenant; the same traffic
  as one key is replayed too, for "the tenant no later than one key"), alerts, episodes
  (rising edges of the monitor's own flag per subject) and band changes;
- honest callers: the accuracy of the answers they received against the model's own, and
  the share of correct answers kept when forced into the strongest band;
- thieves: the fidelity of a label-only copy trained on what it was shown, on what an
  undefended model would have shown, and by a thief that knows the defence (see `thieves`).

Cells go to the red team's executors (in-process, local processes or Dask) in chunks of one
victim, so each worker trains a victim once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ConfigurationError
from ...redteam.executors import Executor
from ..summary import Array
from .fidelity import fidelities, model_proba
from .harness import Gateway, Replay

SUITES = ("dev", "test", "all")
#: Queries per caller (the issue: benign streams of 2,000 queries, thieves 2,000 each).
QUERIES = 2000
#: Benign streams per victim: 12 victims x 34 = 408 per half (the issue: at least 400).
BENIGN_PER_VICTIM = 34
#: Cells per task: a victim's cells are cut into chunks of about this many.
CHUNK = 24
SYBIL = ("sybil-keys", "sybil-tenants")
#: Where a risk curve is sampled for the report's plots.
CURVE_POINTS = 60


@dataclass(frozen=True)
class Cell:
    victim: str
    behaviour: str
    seed: int
    queries: int = QUERIES
    world_seed: int = 0  # the victim's split and training


@dataclass(frozen=True)
class CellResult:
    """What one caller met, and what it cost or gained."""

    victim: str
    half: str
    behaviour: str
    family: str
    side: str  # "benign" | "thief"
    seed: int
    target: int | None  # thieves: flagged within this many queries
    queries: int
    flagged_at: int | None  # first flagged (its own episode; a Sybil split: its tenant's)
    first_alert_at: int | None  # first alert for any of its subjects
    why: str  # the first alert's explanation
    one_key_flagged_at: int | None  # Sybil: the same traffic as one key
    alerts: int
    episodes: int
    alerts_match_episodes: bool  # every subject raised exactly one alert per episode
    band_changes: int
    band_changes_per_episode: float  # worst principal: changes / its episodes (>= 1)
    shaped_share: float  # rows answered outside the first band
    final_risk: float
    curve: tuple[tuple[int, float], ...]  # (queries, effective risk)
    accuracy_shown: float | None = None  # benign: top-1 shown vs truth
    accuracy_unshaped: float | None = None  # benign: the model's own top-1 vs truth
    forced_kept: float | None = None  # benign: correct answers kept in the strongest band
    fidelity_defended: float | None = None  # thieves: copy on what it was shown
    fidelity_undefended: float | None = None  # thieves: copy on the model's own answers
    fidelity_knowing: float | None = None  # thieves: the best defence-aware copy
    knowing_strategy: str = ""
    knowing_gain_pts: float | None = None  # net of the strategy's effect without defence
    elapsed_s: float = 0.0

    @property
    def flagged(self) -> bool:
        return self.first_alert_at is not None

    @property
    def knowing_gain(self) -> float | None:
        """Fidelity points (x100) the defence-aware thief gains over the naive one, net of
        what its strategy does to a copy of undefended answers."""
        if self.knowing_gain_pts is not None:
            return self.knowing_gain_pts
        if self.fidelity_knowing is None or self.fidelity_defended is None:
            return None
        return 100.0 * (self.fidelity_knowing - self.fidelity_defended)


@dataclass
class CorpusRun:
    suite: str
    seed: int
    executor: str
    results: list[CellResult] = field(default_factory=list)
    victims: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → facts
    elapsed_s: float = 0.0
    observe_p99_us: float | None = None
    observe_p50_us: float | None = None
    bands: tuple[tuple[float, str, str], ...] = ()
    monitor: dict[str, Any] = field(default_factory=dict)


class Catalogue:
    """Where victims and callers come from: the corpus's own modules (tests swap in theirs)."""

    def victims(self, half: str | None) -> tuple[Any, ...]:
        from .victims import victims

        return victims(half)

    def victim(self, name: str) -> Any:
        from .victims import victim

        return victim(name)

    def behaviours(self, half: str) -> tuple[Any, ...]:
        from .behaviours import BEHAVIOURS

        return tuple(b for b in BEHAVIOURS if b.half == half)

    def behaviour(self, name: str) -> Any:
        from .behaviours import BEHAVIOURS

        for b in BEHAVIOURS:
            if b.name == name:
                return b
        raise ConfigurationError(f"unknown corpus behaviour {name!r}")

    def world(self, spec: Any, seed: int) -> Any:
        from .victims import build_world

        return build_world(spec, seed)

    def generate(self, behaviour: Any, world: Any, n: int, seed: int) -> Any:
        from .behaviours import generate

        return generate(behaviour, world, n, seed)


# planning ---------------------------------------------------------------------------------


def plan(suite: str, *, victims: Sequence[str] | None = None, seed: int = 0,
         queries: int = QUERIES, benign_per_victim: int = BENIGN_PER_VICTIM,
         behaviours: Sequence[str] | None = None,
         catalogue: Catalogue | None = None) -> list[Cell]:
    """Every cell of `suite`: per victim, its half's thieves once and `benign_per_victim`
    honest streams cycling through its half's benign behaviours, each with its own seed."""
    cat = catalogue or Catalogue()
    if suite not in SUITES:
        raise ConfigurationError(f"unknown suite {suite!r}; use: {', '.join(SUITES)}")
    specs = list(cat.victims(None if suite == "all" else suite))
    if victims:
        known = {v.name: v for v in cat.victims(None)}
        unknown = [v for v in victims if v not in known]
        if unknown:
            raise ConfigurationError(f"unknown corpus victim(s) {', '.join(unknown)}; use: "
                                     f"{', '.join(known)}")
        specs = [known[v] for v in victims]
    if behaviours:
        known_b = {x for h in ("dev", "test") for b in cat.behaviours(h)
                   for x in (b.name, b.family)}
        unknown = [b for b in behaviours if b not in known_b]
        if unknown:
            raise ConfigurationError(f"unknown corpus behaviour(s) {', '.join(unknown)}; use "
                                     "behaviour or family names")
    cells = []
    for spec in specs:
        mine = [b for b in cat.behaviours(spec.half)
                if behaviours is None or b.name in behaviours or b.family in behaviours]
        thieves = [b for b in mine if b.side == "thief"]
        benign = [b for b in mine if b.side == "benign"]
        cells += [Cell(spec.name, b.name, seed, _queries(b, queries), seed) for b in thieves]
        cells += [Cell(spec.name, benign[i % len(benign)].name,
                       seed * 1000 + 1 + i // len(benign), queries, seed)
                  for i in range(benign_per_victim if benign else 0)]
    return cells


def _queries(behaviour: Any, default: int) -> int:
    """A behaviour may ask for more queries (slow-and-low, Sybil): its ``queries`` param."""
    value = dict(behaviour.params).get("queries")
    return int(value) if isinstance(value, int | float) and value > 0 else default


def chunks(cells: Sequence[Cell], size: int = CHUNK) -> list[tuple[Cell, ...]]:
    """Cells grouped by victim, each victim's cut into near-equal chunks of about `size`."""
    by_victim: dict[str, list[Cell]] = {}
    for c in cells:
        by_victim.setdefault(c.victim, []).append(c)
    out = []
    for group in by_victim.values():
        k = max(1, round(len(group) / size))
        out += [tuple(group[i::k]) for i in range(k)]
    return out


# running ----------------------------------------------------------------------------------


Progress = Callable[[str, int, int], None]


def run(cells: Sequence[Cell], executor: Executor, *, suite: str = "custom", seed: int = 0,
        progress: Progress | None = None, catalogue: Catalogue | None = None,
        timing: bool = True) -> CorpusRun:
    """Evaluate `cells` on `executor`; then time the monitor's observe in this process."""
    from .harness import recommended

    cat = catalogue or Catalogue()
    bands, monitor = recommended()
    out = CorpusRun(suite, seed, executor.name, bands=bands, monitor=monitor)
    started = time.perf_counter()
    tasks = [(cat, c) for c in chunks(cells)]
    done = 0
    for results, facts in executor.map_unordered(_run_chunk, tasks):
        out.results += results
        out.victims.update(facts)
        done += len(results)
        if progress is not None:
            progress(results[-1].victim if results else "", done, len(cells))
    out.elapsed_s = time.perf_counter() - started
    out.results.sort(key=lambda r: (r.half, r.victim, r.side, r.behaviour, r.seed))
    if timing and cells:
        spec = cat.victim(cells[0].victim)
        out.observe_p50_us, out.observe_p99_us = observe_cost(
            cat.world(spec, cells[0].world_seed))
    return out


def _run_chunk(task: tuple[Catalogue, tuple[Cell, ...]]
               ) -> tuple[list[CellResult], dict[str, dict[str, Any]]]:
    cat, cells = task
    results = [evaluate_cell(c, cat) for c in cells]
    facts = {}
    for c in cells:
        spec = cat.victim(c.victim)
        w = cat.world(spec, c.world_seed)
        facts[c.victim] = {"half": spec.half, "family": spec.family, "data": spec.data,
                           "classes": int(w.summary.n_classes),
                           "features": int(w.summary.n_features),
                           "accuracy": float(w.accuracy)}
    return results, facts


def evaluate_cell(cell: Cell, catalogue: Catalogue | None = None) -> CellResult:
    """Generate one caller's stream, replay it through a fresh gateway, measure."""
    cat = catalogue or Catalogue()
    started = time.perf_counter()
    spec, behaviour = cat.victim(cell.victim), cat.behaviour(cell.behaviour)
    world = cat.world(spec, cell.world_seed)
    stream = cat.generate(behaviour, world, cell.queries, cell.seed)
    proba = model_proba(world, stream.x)
    gw = Gateway(world.summary)
    tenants = tuple(t or None for t in stream.tenants)
    rep = gw.replay(stream.x, stream.t, proba, stream.principals, tenants)
    if behaviour.family == "sybil-keys":  # the tenant, whether or not a key alerted first
        flagged_at = _first(rep, rep.tenant_flagged)
    elif behaviour.family == "sybil-tenants":
        flagged_at = _first(rep, rep.principal_flagged | rep.tenant_flagged)
    else:
        flagged_at = _first(rep, rep.principal_flagged)
    one_key = None
    if behaviour.family in SYBIL:
        solo = Gateway(world.summary).replay(stream.x, stream.t, proba,
                                             ("one-key",) * len(stream.x),
                                             ("one-tenant",) * len(stream.x))
        one_key = _first(solo, solo.principal_flagged)
    alerts_ok, episodes = _episodes(rep, stream.principals, tenants)
    changes, per_episode = _band_changes(rep, stream.principals)
    extra: dict[str, Any] = {}
    if behaviour.side == "benign":
        extra = _harm(gw, rep, stream, proba)
    else:
        extra = fidelities(gw, rep, stream, proba, world, seed=cell.seed)
    first = min((a.at for a in rep.alerts), default=None)
    return CellResult(
        spec.name, spec.half, behaviour.name, behaviour.family, behaviour.side, cell.seed,
        behaviour.target, len(rep), flagged_at, first,
        next((a.why for a in rep.alerts), ""), one_key, len(rep.alerts), episodes,
        alerts_ok, changes, per_episode, float(np.mean(rep.band != 0)) if len(rep) else 0.0,
        float(rep.risk[-1]) if len(rep) else 0.0, curve(rep.risk), **extra,
        elapsed_s=time.perf_counter() - started)


def _first(rep: Replay, flags: Array) -> int | None:
    """Queries answered when `flags` (a subject's episode flag per row) first stood."""
    hit = np.flatnonzero(flags)
    if not len(hit):
        return None
    return int(rep.ends[hit[0]]) if rep.ends is not None else int(hit[0]) + 1


def _rises(flags: Array) -> int:
    f = np.asarray(flags, dtype=bool)
    return int(f[0]) + int(np.count_nonzero(f[1:] & ~f[:-1])) if len(f) else 0


def _episodes(rep: Replay, principals: Sequence[str], tenants: Sequence[str | None]
              ) -> tuple[bool, int]:
    """Whether every episode raised exactly one alert, and the episodes that call for one.

    A subject's episodes are the rising edges of the monitor's own flag over its rows. Each
    principal episode needs its alert; a tenant's needs one of its own only when the key
    that sent the request is not in an episode (otherwise that key's alert tells of it)."""
    who = np.asarray(principals, dtype=object)
    ten = np.asarray(tenants, dtype=object)
    pf, tf = rep.principal_flagged, rep.tenant_flagged
    ok, total = True, 0
    for p in np.unique(who):
        episodes = _rises(pf[who == p])
        ok &= episodes == sum(1 for a in rep.alerts if a.kind == "principal" and a.subject == p)
        total += episodes
    for t in {t for t in tenants if t is not None}:
        rows = np.nonzero(ten == t)[0]
        f = tf[rows]
        rise = rows[f & ~np.r_[False, f[:-1]]]
        needed = int(np.count_nonzero(~pf[rise]))
        told = sum(1 for a in rep.alerts if a.kind == "tenant" and a.subject == t)
        ok &= told == needed
        total += needed
    return ok, total


def _band_changes(rep: Replay, principals: Sequence[str]) -> tuple[int, float]:
    """Band changes in all, and the worst principal's changes per episode of its effective
    flag (its own or its tenant's; at least one episode is assumed)."""
    who = np.asarray(principals, dtype=object)
    total, worst = 0, 0.0
    for p in np.unique(who):
        rows = who == p
        band = rep.band[rows]
        changes = int(np.count_nonzero(band[1:] != band[:-1]))
        episodes = max(1, _rises(rep.principal_flagged[rows] | rep.tenant_flagged[rows]))
        total += changes
        worst = max(worst, changes / episodes)
    return total, worst


def curve(risk: Array, points: int = CURVE_POINTS) -> tuple[tuple[int, float], ...]:
    """(queries, risk) at about `points` evenly spaced queries and at each first rise."""
    n = len(risk)
    if n == 0:
        return ()
    at = set(np.unique(np.linspace(1, n, min(points, n)).round().astype(int)).tolist())
    return tuple((q, round(float(risk[q - 1]), 4)) for q in sorted(at))


def _harm(gw: Gateway, rep: Replay, stream: Any, proba: Array) -> dict[str, Any]:
    """Accuracy of the answers shown against the model's own, and the share of correct
    answers kept if the caller were forced into the strongest band throughout."""
    truth = stream.truth
    forced_band = np.full(len(rep), gw.strongest, dtype=np.int8)
    forced = gw.answer(forced_band, proba, stream.x, stream.principals).argmax(axis=1)
    if truth is None:  # no truth known: the model's own answer is the reference
        truth = rep.truth_labels
        known = np.ones(len(rep), dtype=bool)
    else:
        truth = np.asarray(truth)
        known = truth >= 0
    if not known.any():
        return {}
    right = (rep.truth_labels == truth) & known
    kept = int(np.count_nonzero(right & (forced == truth))) / max(1, int(np.count_nonzero(right)))
    return {"accuracy_shown": float(np.mean(rep.labels[known] == truth[known])),
            "accuracy_unshaped": float(np.mean(rep.truth_labels[known] == truth[known])),
            "forced_kept": kept}


# observe cost ------------------------------------------------------------------------------


def observe_cost(world: Any, rows: int = 2000, warm: int = 2000) -> tuple[float, float]:
    """p50 and p99 (microseconds) of one single-row observe with a tenant, after `warm`
    rows of history, on natural rows of the pool (as bench/monitor.py times it)."""
    gw = Gateway(world.summary)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(world.pool_x), warm + rows)
    x = world.pool_x[idx]
    p = model_proba(world, x)
    m = gw.monitor
    now = 1_750_000_000.0
    for i in range(warm):
        m.observe("timed", x[i:i + 1], p[i:i + 1], tenant="timed-tenant", now=now + i)
    cost = np.empty(rows)
    clock = time.perf_counter_ns
    for j in range(rows):
        i = warm + j
        xi, pi = x[i:i + 1], p[i:i + 1]
        t0 = clock()
        m.observe("timed", xi, pi, tenant="timed-tenant", now=now + i)
        cost[j] = clock() - t0
    return float(np.percentile(cost, 50)) / 1e3, float(np.percentile(cost, 99)) / 1e3


def as_dicts(results: Iterable[CellResult]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    out = []
    for r in results:
        d = asdict(r)
        d["knowing_gain"] = r.knowing_gain
        d["flagged"] = r.flagged
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        out.append(d)
    return out
