"""Extraction risk of LLM callers, from what the gateway sees them do.

An LLM thief shows itself differently from a classifier thief: it asks for the system
prompt (screened as extraction, or answered with a leak the canary filter stopped), it
probes the output layer (logprobs, logit_bias, echo — refused by the controls), and a
distiller spends far more tokens than its peers. Each kind of evidence is a number in
[0, 1] that decays with a half-life; a new event adds to it as in a noisy-OR, and the
risk is the noisy-OR of the kinds, so one strong signal or several weak ones count.
Kept per model for each principal and each tenant (one thief with many keys), bounded by
an LRU of subjects. Peeking is a dictionary lookup and a few exponentials.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .settings import LlmMonitorSettings

KINDS = ("leak", "extraction", "injection", "probe", "volume", "distill")


@dataclass(slots=True)
class _Evidence:
    """One subject's decayed evidence per kind, and its decayed token count."""

    values: dict[str, float] = field(default_factory=dict)
    tokens: float = 0.0
    requests: int = 0
    at: float = 0.0
    flagged: bool = False

    def decay(self, now: float, half_life_s: float) -> None:
        if now <= self.at:
            return
        factor = 0.5 ** ((now - self.at) / half_life_s)
        self.values = {k: v * factor for k, v in self.values.items() if v * factor > 1e-4}
        self.tokens *= factor
        self.at = now

    def add(self, kind: str, weight: float) -> None:
        if weight <= 0:
            return
        old = self.values.get(kind, 0.0)
        self.values[kind] = 1.0 - (1.0 - old) * (1.0 - min(weight, 1.0))

    def score(self) -> float:
        keep = 1.0
        for v in self.values.values():
            keep *= 1.0 - v
        return 1.0 - keep


@dataclass(frozen=True, slots=True)
class LlmRisk:
    """A subject's risk now, with each kind's part (for the admin API and alerts)."""

    score: float
    parts: dict[str, float]
    requests: int
    tokens: float
    flagged: bool

    def explain(self) -> str:
        parts = sorted(self.parts.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {v:.2f}" for k, v in parts if v >= 0.01) or "no evidence"


@dataclass(frozen=True, slots=True)
class Crossing:
    """A subject whose risk rose over `alert_at` with this observation (alert once)."""

    model: str
    kind: str  # "principal" | "tenant"
    subject: str
    tenant: str | None
    risk: LlmRisk


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
    probe: bool = False
    # evidence in [0, 1] from the distillation test of the caller's recent prompts
    # (llm/distill.py); it arrives apart from any request, with tokens 0
    distill: float = 0.0
    ts: float = 0.0  # when it was seen (shared observations are applied at their time)
    origin: str = ""  # the replica that answered


class LlmRiskBook:
    """Per model: each principal's and tenant's evidence; `observe` returns new crossings."""

    def __init__(self, settings: LlmMonitorSettings, models: Iterable[str]) -> None:
        self._s = settings
        self._models = frozenset(models)
        self._subjects: dict[str, OrderedDict[str, _Evidence]] = {}
        # (model, "p" or "t") → (median of peers' decayed tokens, when computed)
        self._medians: dict[tuple[str, str], tuple[float | None, float]] = {}

    def knows(self, model: str) -> bool:
        """Whether this book scores `model` (an LLM served on /v1)."""
        return model in self._models

    def peek(self, model: str, principal: str, tenant: str | None,
             now: float | None = None) -> float:
        """The higher of the principal's and its tenant's risk now."""
        table = self._subjects.get(model)
        if table is None:
            return 0.0
        now = time.time() if now is None else now
        risk = 0.0
        for key in (f"p:{principal}", f"t:{tenant}" if tenant else None):
            ev = table.get(key) if key else None
            if ev is not None:
                ev.decay(now, self._s.half_life_s)
                risk = max(risk, ev.score())
        return risk

    def risk(self, model: str, kind: str, subject: str, now: float | None = None) -> LlmRisk:
        table = self._subjects.get(model, OrderedDict())
        ev = table.get(f"{kind[0]}:{subject}")
        if ev is None:
            return LlmRisk(0.0, {}, 0, 0.0, False)
        ev.decay(time.time() if now is None else now, self._s.half_life_s)
        return LlmRisk(ev.score(), dict(ev.values), ev.requests, ev.tokens, ev.flagged)

    def observe(self, obs: Observation, now: float | None = None, *,
                remote: bool = False) -> list[Crossing]:
        """Add what `obs` shows; the subjects it lifted over `alert_at` (alert each once).

        `remote`: another replica's observation. It never flags a subject, so the next
        observation a replica answers itself raises the alert there, even when the
        crossing came from the stream (two replicas may then both alert: better twice
        than never).
        """
        now = time.time() if now is None else now
        table = self._subjects.setdefault(obs.model, OrderedDict())
        crossings = []
        subjects = [("principal", obs.principal, f"p:{obs.principal}")]
        if obs.tenant:
            subjects.append(("tenant", obs.tenant, f"t:{obs.tenant}"))
        for kind, subject, key in subjects:
            ev = self._touch(table, key, now)
            if ev.score() < self._s.alert_at / 2:
                ev.flagged = False  # re-armed once the risk has clearly fallen back
            self._add(ev, obs, key[0], now)
            score = ev.score()
            if score >= self._s.alert_at and not ev.flagged and not remote:
                ev.flagged = True
                crossings.append(Crossing(obs.model, kind, subject, obs.tenant,
                                          LlmRisk(score, dict(ev.values), ev.requests,
                                                  ev.tokens, True)))
        return crossings

    def _touch(self, table: OrderedDict[str, _Evidence], key: str, now: float) -> _Evidence:
        ev = table.get(key)
        if ev is None:
            ev = table[key] = _Evidence(at=now)
            while len(table) > self._s.max_subjects:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
            ev.decay(now, self._s.half_life_s)
        return ev

    def _add(self, ev: _Evidence, obs: Observation, prefix: str, now: float) -> None:
        s = self._s
        ev.requests += 1
        ev.tokens += max(obs.tokens, 0)
        if obs.leak:
            ev.add("leak", s.leak)
        if obs.screen == "extraction":
            ev.add("extraction", s.extraction * obs.screen_score)
        elif obs.screen == "injection":
            ev.add("injection", s.injection * obs.screen_score)
        if obs.probe:
            ev.add("probe", s.probe)
        if obs.distill > 0:
            ev.add("distill", s.distill * obs.distill)
        if obs.tokens > 0:
            ev.values["volume"] = s.volume * self._volume_share(ev, obs.model, prefix, now)

    def _volume_share(self, ev: _Evidence, model: str, prefix: str, now: float) -> float:
        """0 below 10x the peers' median decayed tokens, rising to 1 at 100x."""
        median = self._peer_median(model, prefix, now)
        if median is None or median <= 0:
            return 0.0
        ratio = ev.tokens / median
        return 0.0 if ratio <= 10 else min(1.0, math.log10(ratio) - 1.0)

    def _peer_median(self, model: str, prefix: str, now: float) -> float | None:
        """The median decayed token count of the most recent peers, recomputed every 10 s.

        A sample of the 1,000 most recently seen subjects keeps this bounded; a thief is
        always among them, which only lifts the median a little.
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
            p.decay(now, self._s.half_life_s)
            if p.tokens > 0:
                sample.append(p.tokens)
            if len(sample) >= 1000:
                break
        median = statistics.median(sample) if len(sample) > self._s.min_peers else None
        self._medians[(model, prefix)] = (median, now)
        return median
