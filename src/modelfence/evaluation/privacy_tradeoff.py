"""Differential privacy's trade-off on the efficacy corpus: what thieves lose, what honest
callers pay.

For every victim of a corpus half (`monitor.corpus.victims`) and every mechanism and ε, in
one of two placements:

- ``always``: every answer goes through the mechanism (the guarantee holds for everyone);
- ``flagged``: the mechanism is the strongest band of the recommended configuration, so
  only a caller the monitor flagged gets it (the monitor and its bands as the corpus runs
  them, `harness.Gateway`; the guarantee holds for flagged callers only);
- ``flagged-budget``: the same, with a budget of `BUDGET_EPSILON` per principal
  (``privacy.principal_epsilon: 100``, ``on_spent: refuse``, at the default δ): once a caller's
  charged answers compose (`privacy.accountant`) past the budget, every later row is
  refused, and a refused row teaches a thief nothing and counts as wrong for an honest
  caller.

``always`` and ``flagged`` measure the mechanism alone, without a budget: every row is
answered. Each row is a fresh draw; the gateway's repeat memory (the same input within the
period gets its first answer) matters only to exact repeats, which these thieves do not send.

Thieves: the half's active-learning (uncertainty sampling, k-center) and boundary-walking
callers of `queries` queries each, generated as the corpus does (against the raw model);
their fidelity is that of the corpus's label-only copy (`fidelity.Copies`) trained on the
labels they were shown, against the same copy trained on the model's own labels. Honest
callers: the half's benign behaviours (natural rows with known truth); their loss is the
top-1 accuracy of the answers shown against the model's own answers, over all their rows.

The issue's target, per victim: at most `HONEST_LOSS_PTS` points of honest top-1 accuracy
lost, and every such thief at least `THIEF_LOSS_PTS` points of fidelity lost; met when it
holds on at least `VICTIM_SHARE` of the victims. Choose a setting on ``dev``; report ``test``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..monitor.corpus.behaviours import Behaviour, behaviours, generate
from ..monitor.corpus.fidelity import Copies, model_proba
from ..monitor.corpus.harness import TEST_SECRET, Gateway, recommended
from ..monitor.corpus.victims import CorpusWorld, build_world, victims
from ..redteam.executors import Executor, InProcess
from ..shaping.base import shaped_labels
from ..shaping.spec import parse_defense

Array = np.ndarray[Any, Any]
THIEF_FAMILIES = ("active-uncertainty", "active-kcenter", "boundary-walk")
PLACEMENTS = ("always", "flagged", "flagged-budget")
HONEST_LOSS_PTS, THIEF_LOSS_PTS, VICTIM_SHARE = 1.0, 10.0, 0.8
QUERIES = 2000
#: Rows per honest stream (every benign behaviour of the half, one stream each).
HONEST_QUERIES = 1000
#: Copies per fidelity (mean over seeds): one copy moves by a point or two on its own.
FITS = 2
#: The ``flagged-budget`` placement's ε per principal (privacy.principal_epsilon).
BUDGET_EPSILON = 100.0
#: Mechanisms and ε measured when none are named (see `modelfence.privacy`).
DEFAULT_MECHANISMS: tuple[str, ...] = (
    "dp-rr:0.25", "dp-rr:1", "dp-rr:4", "dp-bdpl:0.25,0.6", "dp-bdpl:0.25,0.3", "dp-bdpl:1,0.2",
    "dp-laplace:8", "dp-gauss:8,1e-06")


@dataclass(frozen=True)
class Config:
    spec: str
    placement: str  # "always" | "flagged"

    @property
    def name(self) -> str:
        return self.spec if self.placement == "always" else f"{self.placement}:{self.spec}"


@dataclass(frozen=True)
class VictimResult:
    """One victim under one configuration."""

    victim: str
    half: str
    config: str
    honest_accuracy_model: float  # the model's own top-1 on the honest rows
    honest_accuracy: float  # of the answers shown
    honest_rows: int
    fidelity_undefended: dict[str, float]  # thief behaviour -> fidelity of its copy
    fidelity: dict[str, float]
    flagged_share: dict[str, float]  # thief -> share of its rows answered in the flagged band

    @property
    def honest_loss_pts(self) -> float:
        return 100.0 * (self.honest_accuracy_model - self.honest_accuracy)

    @property
    def thief_loss_pts(self) -> dict[str, float]:
        return {t: 100.0 * (self.fidelity_undefended[t] - self.fidelity[t]) for t in self.fidelity}

    @property
    def least_thief_loss_pts(self) -> float:
        return min(self.thief_loss_pts.values(), default=float("nan"))

    @property
    def meets(self) -> bool:
        return (self.honest_loss_pts <= HONEST_LOSS_PTS
                and self.least_thief_loss_pts >= THIEF_LOSS_PTS)


@dataclass(frozen=True)
class ConfigSummary:
    """One configuration over the victims: the target's share and the distributions."""

    config: str
    victims: int
    meeting: int
    honest_loss_median: float
    honest_loss_worst: float
    thief_loss_median: float  # of each victim's least-hurt thief
    thief_loss_worst: float

    @property
    def share(self) -> float:
        return self.meeting / self.victims if self.victims else 0.0

    @property
    def met(self) -> bool:
        return self.share >= VICTIM_SHARE


@dataclass
class PrivacyTradeoff:
    suite: str
    queries: int
    honest_queries: int
    fits: int
    seed: int
    results: list[VictimResult] = field(default_factory=list)
    created: str = ""
    machine: str = ""
    elapsed_s: float = 0.0

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PrivacyTradeoff:
        """A run back from `to_dict`'s JSON (for reporting a saved run again)."""
        names = {f for f in VictimResult.__dataclass_fields__}
        results = [VictimResult(**{k: v for k, v in r.items() if k in names})
                   for r in doc["results"]]
        return cls(doc["suite"], doc["queries"], doc["honest_queries"], doc["fits"],
                   doc["seed"], results, doc["created"], doc["machine"], doc["elapsed_s"])

    def configs(self) -> list[str]:
        return list(dict.fromkeys(r.config for r in self.results))

    def summary(self, config: str) -> ConfigSummary:
        rows = [r for r in self.results if r.config == config]
        honest = np.array([r.honest_loss_pts for r in rows])
        thief = np.array([r.least_thief_loss_pts for r in rows])
        return ConfigSummary(config, len(rows), sum(r.meets for r in rows),
                       float(np.median(honest)), float(honest.max()),
                       float(np.median(thief)), float(thief.min()))

    def best(self) -> ConfigSummary:
        """The configuration meeting the target on most victims; then the one costing honest
        callers least (median), then the one hurting thieves most."""
        return max((self.summary(c) for c in self.configs()),
                   key=lambda s: (s.meeting, -s.honest_loss_median, s.thief_loss_median))

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for row, r in zip(doc["results"], self.results, strict=True):
            row.update(honest_loss_pts=r.honest_loss_pts, thief_loss_pts=r.thief_loss_pts,
                       meets=r.meets)
        doc["summaries"] = [asdict(self.summary(c)) | {"met": self.summary(c).met}
                            for c in self.configs()]
        return doc

    def markdown(self) -> str:
        """Per configuration: victims meeting the target, honest loss and thief loss."""
        lines = [
            f"Differential privacy on the efficacy corpus ({self.suite} half): "
            f"{self.queries:,} queries per thief, {self.honest_queries:,} per honest stream, "
            f"fidelity of a label-only copy (mean of {self.fits}). Target per victim: honest "
            f"top-1 loss ≤ {HONEST_LOSS_PTS:g} point and every active-learning or "
            f"boundary-walking thief ≥ {THIEF_LOSS_PTS:g} points of fidelity lost; met on "
            f"≥ {VICTIM_SHARE:.0%} of victims. {self.machine}, {self.created}, "
            f"{self.elapsed_s:.0f} s.",
            "",
            "| mechanism | victims meeting | honest loss median | worst | "
            "least thief loss median | worst |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c in self.configs():
            s = self.summary(c)
            lines.append(f"| `{c}` | {s.meeting}/{s.victims} | {s.honest_loss_median:.2f} | "
                         f"{s.honest_loss_worst:.2f} | {s.thief_loss_median:.1f} | "
                         f"{s.thief_loss_worst:.1f} |")
        return "\n".join(lines) + "\n"

    def victim_markdown(self, config: str) -> str:
        """One configuration, one row per victim (losses in points)."""
        rows = [r for r in self.results if r.config == config]
        thieves = sorted({t for r in rows for t in r.fidelity})
        lines = [f"| victim | honest loss | {' | '.join(thieves)} | meets |",
                 "|---|---:|" + "---:|" * len(thieves) + "---|"]
        for r in rows:
            loss = r.thief_loss_pts
            cells = [f"{loss[t]:.1f}" if t in loss else "—" for t in thieves]
            lines.append(f"| {r.victim} | {r.honest_loss_pts:.2f} | {' | '.join(cells)} | "
                         f"{'yes' if r.meets else 'no'} |")
        return "\n".join(lines) + "\n"


# measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """A caller's rows, what the model answered, and where the monitor had flagged it."""

    behaviour: Behaviour
    x: Array
    principals: tuple[str, ...]
    truth: Array | None
    proba: Array
    flagged: Array  # [n] bool: answered in a band past the first


def streams(world: CorpusWorld, side: str, *, queries: int, seed: int) -> list[Stream]:
    """The half's thieves of `THIEF_FAMILIES` (side "thief") or its benign behaviours."""
    chosen = [b for b in behaviours(world.spec.half, side)
              if side == "benign" or b.family in THIEF_FAMILIES]
    out = []
    for b in chosen:
        s = generate(b, world, queries, seed)
        proba = model_proba(world, s.x)
        rep = Gateway(world.summary).replay(s.x, s.t, proba, s.principals,
                                            tuple(t or None for t in s.tenants))
        out.append(Stream(b, np.asarray(s.x, dtype=np.float64), s.principals, s.truth, proba,
                          np.asarray(rep.band) != 0))
    return out


def shown_labels(world: CorpusWorld, stream: Stream, config: Config) -> tuple[Array, Array]:
    """The top-1 class each row of `stream` was shown under `config`, and which rows were
    answered at all (all but those past a spent budget)."""
    bands = ((0.0, "none", "standard"), (0.5, config.spec, "private"))
    gw = Gateway(world.summary, bands=bands, monitor=recommended()[1], secret=TEST_SECRET)
    band = (np.ones(len(stream.x), dtype=np.int8) if config.placement == "always"
            else stream.flagged.astype(np.int8))
    shown = gw.answer(band, stream.proba, stream.x, stream.principals)
    labels = shaped_labels(stream.proba, np.asarray(shown, dtype=np.float64))
    answered = np.ones(len(labels), dtype=bool)
    if config.placement == "flagged-budget":
        answered = within_budget(gw.bands[1].defense, stream, band.astype(bool))
    return labels, answered


def budget_answers(spec: str, budget: float, delta: float) -> int:
    """How many charged answers of mechanism `spec` the accountant allows within `budget`."""
    from ..privacy.accountant import Accountant

    acc = Accountant(delta)
    lo, hi = 0, 1
    while acc.single(spec, hi) <= budget and hi < 10**7:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # acc.single(lo) <= budget < acc.single(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if acc.single(spec, mid) <= budget else (lo, mid)
    return lo


def within_budget(defense: Any, stream: Stream, private: Array) -> Array:
    """Rows answered under a budget of `BUDGET_EPSILON` per principal: each principal's rows
    until its charged answers (private rows the mechanism charges) exceed what it allows."""
    from ..config.privacy import PrivacySettings

    if not getattr(defense, "private", False):  # nothing charged, nothing refused
        return np.ones(len(private), dtype=bool)
    allowed = budget_answers(defense.spec, BUDGET_EPSILON,
                             float(PrivacySettings.model_fields["delta"].default))
    charged = private & np.asarray(defense.charged(stream.proba), dtype=bool)
    who = np.asarray(stream.principals, dtype=object)
    answered = np.ones(len(charged), dtype=bool)
    for p in np.unique(who):
        rows = np.nonzero(who == p)[0]
        spent = np.cumsum(charged[rows])
        answered[rows] = spent <= allowed
    return answered


def measure_victim(name: str, configs: Sequence[Config], *, queries: int = QUERIES,
                   honest_queries: int = HONEST_QUERIES, fits: int = FITS,
                   seed: int = 0) -> list[VictimResult]:
    """Every configuration on one victim (its world, thieves and honest streams made once)."""
    from ..monitor.corpus.victims import victim as victim_spec

    spec = victim_spec(name)
    world = build_world(spec, seed)
    thieves = streams(world, "thief", queries=queries, seed=seed)
    honest = [s for s in streams(world, "benign", queries=honest_queries, seed=seed)
              if s.truth is not None]
    copies = {s.behaviour.name: Copies(world, s.x, seed) for s in thieves}
    undefended = {s.behaviour.name: copies[s.behaviour.name].fidelity(
        s.proba.argmax(axis=1), fits=fits) for s in thieves}
    known = [np.asarray(s.truth) >= 0 for s in honest]
    rows = sum(int(k.sum()) for k in known)
    model_right = sum(int(np.sum((s.proba.argmax(axis=1) == s.truth)[k]))
                      for s, k in zip(honest, known, strict=True))
    out = []
    for config in configs:
        fidelity = {}
        for s in thieves:
            labels, answered = shown_labels(world, s, config)
            fidelity[s.behaviour.name] = copies[s.behaviour.name].fidelity(
                labels, None if answered.all() else answered, fits=fits)
        right = 0
        for s, k in zip(honest, known, strict=True):
            labels, answered = shown_labels(world, s, config)
            right += int(np.sum(((labels == s.truth) & answered)[k]))
        flagged = {s.behaviour.name: (1.0 if config.placement == "always"
                                      else float(np.mean(s.flagged))) for s in thieves}
        out.append(VictimResult(name, spec.half, config.name, model_right / max(1, rows),
                                right / max(1, rows), rows, undefended, fidelity, flagged))
    return out


def _task(args: tuple[str, tuple[Config, ...], int, int, int, int]) -> list[VictimResult]:
    name, configs, queries, honest_queries, fits, seed = args
    return measure_victim(name, configs, queries=queries, honest_queries=honest_queries,
                          fits=fits, seed=seed)


def configs_for(mechanisms: Sequence[str], placements: Sequence[str] = PLACEMENTS
                ) -> list[Config]:
    """Every (mechanism, placement), each mechanism checked by `parse_defense` first."""
    for p in placements:
        if p not in PLACEMENTS:
            raise ConfigurationError(f"unknown placement {p!r}; use: {', '.join(PLACEMENTS)}")
    out = []
    for m in mechanisms:
        d = parse_defense(m, secret=TEST_SECRET)
        out += [Config(d.spec, p) for p in placements]
    return out


def run(suite: str, mechanisms: Sequence[str], *, placements: Sequence[str] = PLACEMENTS,
        victim_names: Sequence[str] | None = None, queries: int = QUERIES,
        honest_queries: int = HONEST_QUERIES, fits: int = FITS, seed: int = 0,
        executor: Executor | None = None,
        progress: Callable[[str, int, int], None] | None = None) -> PrivacyTradeoff:
    """Measure every configuration on every victim of `suite` ("dev" or "test") or the named
    victims, one victim per task."""
    if suite not in ("dev", "test"):
        raise ConfigurationError(f"unknown suite {suite!r}; use dev or test")
    configs = tuple(configs_for(mechanisms, placements))
    if not configs:
        raise ConfigurationError("name at least one mechanism")
    names = list(victim_names) if victim_names else [v.name for v in victims(suite)]
    started = time.perf_counter()
    out = PrivacyTradeoff(suite, queries, honest_queries, fits, seed)
    runner = executor or InProcess()
    tasks = [(n, configs, queries, honest_queries, fits, seed) for n in names]
    for done, results in enumerate(runner.map_unordered(_task, tasks), 1):
        out.results += results
        if progress is not None:
            progress(results[0].victim if results else "", done, len(tasks))
    order = {n: i for i, n in enumerate(names)}
    conf = {c.name: i for i, c in enumerate(configs)}
    out.results.sort(key=lambda r: (conf[r.config], order[r.victim]))
    out.created = datetime.now(UTC).isoformat(timespec="minutes")
    out.machine = f"{platform.machine()}, {runner.name}"
    out.elapsed_s = round(time.perf_counter() - started, 1)
    return out
