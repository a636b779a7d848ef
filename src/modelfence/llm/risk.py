"""Extraction risk of LLM callers, from what the gateway sees them do.

An LLM thief shows itself differently from a classifier thief: it asks for the system
prompt (screened as extraction, or answered with a leak the canary filter stopped), it
probes the output layer (logprobs, logit_bias, echo, n over the cap — refused or clamped
by the controls: clamping hides the probe from the caller, not from the book), and a
distiller asks for what the distillation test finds unlike benign traffic and spends far
more tokens than its peers.

Each kind of evidence is a decayed count of events, halving over a horizon matched to the
attack (`LlmHalfLives`: probes days, so a patient prober adds up; screener hits hours). A
subject's part of a kind is what it shows *beyond what honest traffic of its volume
shows*: the count less the `false_alarm` upper quantile of a Poisson count at the honest
background rate times the subject's decayed requests. So a heavy honest user's share of
screener false positives is not evidence, nor is a new caller's first one; a caller screened
as an attacker again and again soon is. For screener hits that rate is learned from the
model's own traffic (`background_rate`): how often a screener flags a prompt depends on what
a population asks (a security help desk says "password" all day), so a fixed rate fits one
population and punishes another. `screen_rate` is its floor, `SCREEN_RATE_CAP` its ceiling
(thieves flooding a model cannot raise everyone's allowance past it). The parts combine as a
noisy-OR: one strong signal or several weak ones.

The kinds are this protocol's evidence; combining them and holding the result is the engine
the classifier monitor shares (`modelfence.risk`): noisy-OR, episodes, one alert per episode
(a principal's names its tenant when both started together). LLM rules (`llm_rules`): an
episode starts at `alert_at` and ends below half of it (where the alert used to re-arm),
`LLM_MIN_DWELL_S` after it started; no sticky hold (the half-lives already hold probes for
days). Alerts come as before; the effective risk now holds through an episode instead of
sinking with each decay, and below one falls once under half of where it rose, at most once
per dwell, as a classifier caller's does.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from ..risk import NO_EPISODE, Crossing, Episode, Hysteresis, Kind, combine, crossings, step, view
from ..stores.recent import recent
from .settings import LlmHalfLives, LlmMonitorSettings

KINDS = ("leak", "extraction", "injection", "probe", "sampling", "clamp", "volume", "distill")

#: Output fields asked beyond the band (refused or clamped), by the kind they count as:
#: probes of the output layer; more choices (honest clients compare drafts, a prober
#: samples the distribution); max_tokens over the cap (honest SDKs send it on every
#: request: a saturating kind).
PROBE_FIELDS = frozenset({"logprobs", "top_logprobs", "logit_bias", "echo"})
SAMPLING_FIELDS = frozenset({"n", "best_of"})
CLAMP_FIELDS = frozenset({"max_tokens", "max_completion_tokens"})

#: Members a tenant remembers for its tokens per member (beyond: new ones are not counted).
MAX_MEMBERS = 100_000

#: Kinds whose background rate is learned per model from its traffic (screener verdicts).
LEARNED_KINDS = ("extraction", "injection")
#: The most a learned background rate may reach: 5% of prompts, several times what the
#: shipped screener flags in honest traffic (0.8-1.9% of each corpus half's honest prompts),
#: far below a thief's share (most of its prompts).
SCREEN_RATE_CAP = 0.05
#: Decayed requests a model needs before its own rate replaces the configured floor.
BACKGROUND_MIN_REQUESTS = 200.0

#: An LLM episode's least length: one fast-decaying burst (a short `half_life_s`) alerts
#: once; short beside the shipped half-lives (hours to days), so it seldom ends one.
LLM_MIN_DWELL_S = 600.0

#: Which half-life (a field of `LlmHalfLives`) each counted kind decays with.
_HORIZON = {"leak": "leak", "extraction": "screen", "injection": "screen", "probe": "probe",
            "sampling": "probe", "clamp": "clamp", "distill": "distill"}


def _halves(settings: LlmMonitorSettings) -> dict[str, float]:
    """Each kind's half-life, and the tokens' (the volume's), in seconds."""
    lives: LlmHalfLives = settings.half_lives
    out = {k: float(getattr(lives, h)) for k, h in _HORIZON.items()}
    out["volume"] = float(lives.volume)
    if settings.half_life_s is not None:
        out = dict.fromkeys(out, float(settings.half_life_s))
    return out


def llm_rules(settings: LlmMonitorSettings) -> Hysteresis:
    """The episode rules for LLM callers (see the module's docstring for why these)."""
    return Hysteresis(threshold=settings.alert_at, release=settings.alert_at / 2,
                      min_dwell_s=LLM_MIN_DWELL_S, hold_s=0.0, sticky=frozenset())


@dataclass(slots=True)
class _Evidence:
    """One subject's decayed counts per kind, requests and tokens.

    `seen`: requests decayed with each kind's half-life (the volume the background rate
    applies to). `given` (principals): what of `counts` (and "tokens") it added to its
    tenant's (evidence found apart from a call may name no tenant). `top` (tenants): per
    kind (and "tokens"), the member that gave the most and how much, decayed alike, for
    the leave-one-out count;
    `members` (tenants): when each member was last seen, for its tokens per member.
    `episode`: the subject's held risk and episode (`risk.episodes`).
    """

    counts: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    given: dict[str, float] = field(default_factory=dict)
    top: dict[str, tuple[str, float]] = field(default_factory=dict)
    members: dict[str, float] = field(default_factory=dict)
    prune_at: int = 64
    volume: float = 0.0
    tokens: float = 0.0
    requests: int = 0
    at: float = 0.0
    episode: Episode = NO_EPISODE

    def decay(self, now: float, speeds: dict[str, float]) -> None:
        """Decay to `now`; `speeds`: each kind's ln 2 / half-life."""
        if now <= self.at:
            return
        dt = now - self.at
        f: dict[str, float] = {}

        def factor(kind: str) -> float:
            got = f.get(kind)
            if got is None:
                got = f[kind] = math.exp(-speeds[kind] * dt)
            return got

        if self.counts:
            self.counts = {k: v for k, c in self.counts.items()
                           if (v := c * factor(k)) > 1e-4}
            self.top = {k: (who, c * factor(k)) for k, (who, c) in self.top.items()
                        if k in self.counts or k == "tokens"}
        if self.given:
            self.given = {k: v for k, c in self.given.items() if (v := c * factor(k)) > 1e-4}
        self.seen = {k: n * factor(k) for k, n in self.seen.items()}
        if self.tokens or self.volume:
            self.tokens *= factor("volume")
            self.volume *= factor("volume")
        self.at = now


def strength(weight: float, share: float) -> float:
    """Events of full weight that one event of `share` (a score, a distill evidence) is
    worth: one alone scores exactly weight x share, several add as a noisy-OR."""
    share = min(max(share, 0.0), 1.0)
    weight = min(weight, 0.999999)
    if weight <= 0.0 or share <= 0.0:
        return 0.0
    return math.log1p(-weight * share) / math.log1p(-weight)


@dataclass(frozen=True, slots=True)
class LlmRisk:
    """A subject's risk now, with each kind's part (for the admin API and alerts).

    `score` is the effective risk (held by the episode), `raw` the parts' noisy-OR now,
    `queries` the requests it saw, `flagged` whether an episode is on.
    """

    score: float
    parts: dict[str, float]
    queries: int
    tokens: float
    flagged: bool
    raw: float = 0.0

    def explain(self) -> str:
        parts = sorted(self.parts.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {v:.2f}" for k, v in parts if v >= 0.01) or "no evidence"


#: An LLM subject's episode that started with an observation (`risk.crossings`).
LlmCrossing: TypeAlias = Crossing[LlmRisk]


@dataclass(frozen=True, slots=True)
class Observation:
    """What one answered (or refused) LLM call tells about its caller."""

    model: str
    principal: str
    tenant: str | None
    tokens: int = 0
    leak: bool = False
    screen: str = ""
    screen_score: float = 0.0
    probe: bool = False  # a refused probe of the output layer whose field is not named
    # evidence in [0, 1] from the distillation test of the caller's recent prompts
    # (llm/distill.py); it arrives apart from any request, with tokens 0
    distill: float = 0.0
    ts: float = 0.0  # when it was seen (shared observations are applied at their time)
    origin: str = ""  # the replica that answered
    # output fields the request asked beyond its band's controls, refused or clamped
    # ("logprobs", "logit_bias", "echo", "n", "max_tokens", ...)
    asked: tuple[str, ...] = ()

    @property
    def is_request(self) -> bool:
        """Whether a call was seen (distill evidence arrives apart from any call)."""
        return bool(self.tokens > 0 or self.leak or self.screen or self.probe or self.asked)


class LlmRiskBook:
    """Per model: each principal's and tenant's evidence; `observe` returns new crossings."""

    def __init__(self, settings: LlmMonitorSettings, models: Iterable[str], *,
                 rules: Hysteresis | None = None) -> None:
        self._s = settings
        self.rules = rules or llm_rules(settings)
        self._halves = _halves(settings)
        self._speeds = {k: math.log(2.0) / h for k, h in self._halves.items()}
        self._speeds["tokens"] = self._speeds["volume"]
        self._models = frozenset(models)
        self._subjects: dict[str, OrderedDict[str, _Evidence]] = {}
        # (model, "p") → (median of the principals' decayed tokens, when computed)
        self._medians: dict[tuple[str, str], tuple[float | None, float]] = {}
        self._weights = {"leak": settings.leak, "extraction": settings.extraction,
                         "injection": settings.injection, "probe": settings.probe,
                         "sampling": settings.sampling, "distill": settings.distill}
        self._rates = {"extraction": settings.screen_rate, "injection": settings.screen_rate,
                       "probe": settings.probe_rate, "sampling": settings.sampling_rate}
        # per model: all its traffic's decayed screener hits and requests (the background)
        self._background: dict[str, _Evidence] = {}

    @property
    def max_subjects(self) -> int:
        return self._s.max_subjects

    def watches(self, model: str) -> bool:
        """Whether this book scores `model` (an LLM served on /v1)."""
        return model in self._models

    def peek(self, model: str, principal: str, tenant: str | None,
             now: float | None = None) -> float:
        """The higher of the principal's and its tenant's effective risk now (the LLM
        protocol's `risk.RiskSource`)."""
        table = self._subjects.get(model)
        if table is None:
            return 0.0
        now = time.time() if now is None else now
        risk = 0.0
        keys = [f"p:{principal}"] + ([f"t:{tenant}"] if tenant else [])
        for key in keys:
            ev = table.get(key)
            if ev is not None:
                ev.decay(now, self._speeds)
                raw = combine(self._parts(ev, key[0], model))
                risk = max(risk, view(ev.episode, raw, now, self.rules).level)
        return risk

    def risk(self, model: str, kind: str, subject: str, now: float | None = None) -> LlmRisk:
        table = self._subjects.get(model, OrderedDict())
        ev = table.get(f"{kind[0]}:{subject}")
        if ev is None:
            return LlmRisk(0.0, {}, 0, 0.0, False)
        now = time.time() if now is None else now
        ev.decay(now, self._speeds)
        parts = self._parts(ev, kind[0], model)
        raw = combine(parts)
        held = view(ev.episode, raw, now, self.rules)
        return LlmRisk(held.level, parts, ev.requests, ev.tokens, held.active, raw)

    def observe(self, obs: Observation, now: float | None = None, *,
                remote: bool = False) -> list[LlmCrossing]:
        """Add what `obs` shows; the episodes that started with it, one per alert.

        Each subject's episode steps twice: with its risk decayed to `now` (which may end
        an episode, as the alert's re-arming did), then with what `obs` adds. `remote`:
        another replica's observation; it steps the episodes alike (so every replica holds
        the same risk) but raises no alert: the replica that answered raised it.
        """
        now = time.time() if now is None else now
        table = self._subjects.setdefault(obs.model, OrderedDict())
        started: dict[Kind, LlmRisk] = {}
        events = self._events(obs)
        self._learn(obs, events, now)
        member: _Evidence | None = None
        subjects: list[tuple[Kind, str]] = [("principal", f"p:{obs.principal}")]
        if obs.tenant:
            subjects.append(("tenant", f"t:{obs.tenant}"))
        for kind, key in subjects:
            ev = self._touch(table, key, now)
            ev.episode, began = step(ev.episode, combine(self._parts(ev, key[0], obs.model)),
                                     0.0, now, self.rules)
            if member is None:
                member = ev
            else:  # the tenant: what its member gives it, before its volume is judged
                self._note_member(ev, obs.principal, now)
                gives = {**events, "tokens": float(obs.tokens)} if obs.tokens > 0 else events
                for what, n in gives.items():
                    member.given[what] = member.given.get(what, 0.0) + n
                _note_top(ev, obs.principal, member, gives)
            self._add(ev, obs, events, key[0], now)
            parts = self._parts(ev, key[0], obs.model)
            raw = combine(parts)
            ev.episode, rose = step(ev.episode, raw, 0.0, now, self.rules)
            if began or rose:
                started[kind] = LlmRisk(ev.episode.level, parts, ev.requests, ev.tokens,
                                        True, raw)
        if remote or not started:
            return []
        assert member is not None
        return crossings(obs.principal, obs.tenant, started, member.episode.active)

    def _touch(self, table: OrderedDict[str, _Evidence], key: str, now: float) -> _Evidence:
        ev = recent(table, key, lambda: _Evidence(at=now), self._s.max_subjects)
        ev.decay(now, self._speeds)  # a new one is at `now` already: nothing to decay
        return ev

    def _events(self, obs: Observation) -> dict[str, float]:
        """The events `obs` shows, per kind, in events of full weight."""
        s, out = self._s, {}
        if obs.leak:
            out["leak"] = 1.0
        if obs.screen in ("extraction", "injection"):
            out[obs.screen] = strength(self._weights[obs.screen], obs.screen_score)
        if obs.probe or PROBE_FIELDS.intersection(obs.asked):
            out["probe"] = 1.0
        if SAMPLING_FIELDS.intersection(obs.asked):
            out["sampling"] = 1.0
        if CLAMP_FIELDS.intersection(obs.asked):
            out["clamp"] = 1.0
        if obs.distill > 0:
            out["distill"] = strength(s.distill, obs.distill)
        return {k: v for k, v in out.items() if v > 0}

    def _add(self, ev: _Evidence, obs: Observation, events: dict[str, float], prefix: str,
             now: float) -> None:
        if obs.is_request:
            ev.requests += 1
            for kind in self._rates:
                ev.seen[kind] = ev.seen.get(kind, 0.0) + 1.0
        ev.tokens += max(obs.tokens, 0)
        for kind, n in events.items():
            ev.counts[kind] = ev.counts.get(kind, 0.0) + n
        if obs.tokens > 0:
            ev.volume = self._s.volume * self._volume_share(ev, obs.model, prefix, now)

    def _learn(self, obs: Observation, events: dict[str, float], now: float) -> None:
        """Add `obs` to its model's background: every request, and its screener hits."""
        if not obs.is_request:
            return
        bg = self._background.get(obs.model)
        if bg is None:
            bg = self._background[obs.model] = _Evidence(at=now)
        bg.decay(now, self._speeds)
        for kind in LEARNED_KINDS:
            bg.seen[kind] = bg.seen.get(kind, 0.0) + 1.0
            if kind in events:
                bg.counts[kind] = bg.counts.get(kind, 0.0) + events[kind]

    def background_rate(self, model: str, kind: str) -> float:
        """The share of `model`'s requests honest traffic may show as `kind`: the configured
        rate, or for screener kinds the model's own decayed rate where that is higher (with
        enough traffic to tell), at most `SCREEN_RATE_CAP`."""
        rate = self._rates.get(kind, 0.0)
        bg = self._background.get(model)
        if kind not in LEARNED_KINDS or bg is None:
            return rate
        seen = bg.seen.get(kind, 0.0)
        if seen < BACKGROUND_MIN_REQUESTS:
            return rate
        return max(rate, min(bg.counts.get(kind, 0.0) / seen, SCREEN_RATE_CAP))

    def _allowance(self, kind: str, ev: _Evidence, prefix: str, model: str) -> float:
        """Events of `kind` that honest traffic of this subject's volume may show: the
        `false_alarm` upper quantile of its background count (0 for a principal's leaks
        and distillation evidence: they count from the first), and for a tenant a few more."""
        expected = self.background_rate(model, kind) * ev.seen.get(kind, 0.0)
        free = poisson_quantile(expected, self._s.false_alarm)
        return free + self._s.tenant_allowance if prefix == "t" else free

    def _parts(self, ev: _Evidence, prefix: str, model: str) -> dict[str, float]:
        """Each kind's part of the risk: what the subject shows beyond its allowance."""
        parts: dict[str, float] = {}
        for kind, count in ev.counts.items():
            if prefix == "t" and kind in ev.top:
                count -= ev.top[kind][1]  # leave out the member with the most of it
            if kind == "clamp":
                parts[kind] = self._s.clamp * min(1.0, max(count, 0.0))
                continue
            excess = count - self._allowance(kind, ev, prefix, model)
            weight = min(self._weights[kind], 0.999999)
            parts[kind] = 1.0 - (1.0 - weight) ** excess if excess > 0 else 0.0
        if ev.volume > 0:
            parts["volume"] = ev.volume
        return parts

    def _note_member(self, tenant: _Evidence, principal: str, now: float) -> None:
        """Remember that `principal` is an active member; forget the long quiet ones
        (amortised: each time the table has doubled)."""
        if principal not in tenant.members and len(tenant.members) >= MAX_MEMBERS:
            return
        tenant.members[principal] = now
        if len(tenant.members) > tenant.prune_at:
            horizon = now - 3 * self._halves["volume"]
            tenant.members = {m: t for m, t in tenant.members.items() if t >= horizon}
            tenant.prune_at = max(64, 2 * len(tenant.members))

    def _volume_share(self, ev: _Evidence, model: str, prefix: str, now: float) -> float:
        """0 below 10x the principals' median decayed tokens, rising to 1 at 100x.

        A tenant's tokens are counted per active member, its biggest spender left out: a
        tenant of 50 honest users spends 50 users' tokens, one heavy member is its own
        principal's volume, and only a tenant whose members each spend far more than a user
        (a distiller split over keys) stands out.
        """
        median = self._peer_median(model, "p", now)
        if median is None or median <= 0:
            return 0.0
        tokens = ev.tokens
        if prefix == "t":  # per member, the member that spent the most left out
            top = ev.top.get("tokens")
            others = len(ev.members) - (1 if top is not None else 0)
            tokens = (tokens - (top[1] if top is not None else 0.0)) / max(1, others)
        ratio = tokens / median
        return 0.0 if ratio <= 10 else min(1.0, math.log10(ratio) - 1.0)

    def _peer_median(self, model: str, prefix: str, now: float) -> float | None:
        """The median decayed token count of the most recent peers, recomputed every 10 s.

        A sample of the 1,000 most recently seen subjects keeps this bounded; a thief is
        always among them, which only lifts the median a little. Only peers with at least
        `peer_min_requests` requests count: keys used once or twice (a thief opening a key
        per attempt) would pull the median down and make every regular user look heavy.
        """
        cached = self._medians.get((model, prefix))
        if cached is not None and now - cached[1] < 10.0:
            return cached[0]
        table = self._subjects[model]
        sample = []
        for key in reversed(table):
            if key[0] != prefix:
                continue
            p = table[key]
            p.decay(now, self._speeds)
            if p.tokens > 0 and p.requests >= self._s.peer_min_requests:
                sample.append(p.tokens)
            if len(sample) >= 1000:
                break
        median = statistics.median(sample) if len(sample) > self._s.min_peers else None
        self._medians[(model, prefix)] = (median, now)
        return median


def poisson_quantile(mean: float, alpha: float) -> int:
    """The smallest k with P(X > k) <= alpha for X ~ Poisson(mean) (normal beyond 100).

    The mean is rounded up to three significant digits (never a smaller allowance) and
    the answer cached."""
    if mean <= 0.0:
        return 0
    step = 10.0 ** (math.floor(math.log10(mean)) - 2)
    return _quantile(math.ceil(mean / step) * step, alpha)


@functools.lru_cache(maxsize=4096)
def _quantile(mean: float, alpha: float) -> int:
    if mean > 100.0:
        z = statistics.NormalDist().inv_cdf(1.0 - alpha)
        return math.ceil(mean + z * math.sqrt(mean))
    k, p = 0, math.exp(-mean)
    cdf = p
    while 1.0 - cdf > alpha:
        k += 1
        p *= mean / k
        cdf += p
    return k


def _note_top(tenant: _Evidence, principal: str, member: _Evidence,
              events: dict[str, float]) -> None:
    """Keep, per kind, the tenant's member that gave it the most (the left-out one).

    Every count of a kind decays alike, so their order changes only when a member adds:
    comparing the member that just added with the kept one keeps the true largest (while
    the member's own entry is kept: one dropped from the LRU starts again from nothing).
    """
    for kind in events:
        mine = member.given.get(kind, 0.0)
        kept = tenant.top.get(kind)
        if kept is None or kept[0] == principal or mine >= kept[1]:
            tenant.top[kind] = (principal, mine)

