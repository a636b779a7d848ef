"""Replay a half through the in-process gateway (`engine.Gateway`) on its simulated day and
measure each caller: alerts, band changes, requests until the first alert, honest harm
(answers cut by a band's max_tokens, answers stopped as a leak, refusals), and for each
thief's attempt whether the secret reached the client, judged with the attack's own inverse
transform (transforms.Judge), independent of the gateway's detectors."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..risk import LlmCrossing as Crossing
from .callers import Caller, Request, timeline
from .engine import CachingEmbedder, Gateway, Outcome
from .populations import CorpusHalf
from .transforms import Judge

Progress = Callable[[str, int, int], None]


@dataclass
class CallerResult:
    name: str
    population: str
    family: str
    half: str
    group: str
    tenant: str | None
    model: str
    target: int | None
    form: str = ""
    requests: int = 0
    answered: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> requests
    alerts: int = 0  # crossings on one of its keys
    tenant_alerts: int = 0  # crossings on its tenant (shared with its peers when honest)
    first_alert: int | None = None  # its requests sent when its key or tenant first alerted
    band_changes: int = 0
    bands: dict[str, int] = field(default_factory=dict)  # band -> requests answered in it
    cut_by_band: int = 0
    leak_stopped: int = 0  # answers the leak filter stopped
    risk_max: float = 0.0
    tokens: int = 0
    secret_whole: bool | None = None  # thieves: the whole secret reached the client
    secret_any: bool | None = None  # thieves: some of it did
    secret_parts: tuple[str, ...] = ()
    shares_tenant_with_thief: bool = False
    why: str = ""  # the evidence behind its first band change or alert

    @property
    def alerted(self) -> bool:
        return self.first_alert is not None


@dataclass
class HalfResult:
    half: str
    callers: list[CallerResult]
    elapsed_s: float
    requests: int
    distill: str  # the distillation detector's status
    embedded: int  # texts embedded (cache misses)
    embed_hits: int
    started: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    semantic_checked: int = 0  # answers the paraphrase check (canary.semantic) read
    # the thieves again with the example policies off: what the leak filter stops alone
    filter_alone: list[CallerResult] = field(default_factory=list)

    def of(self, population: str) -> list[CallerResult]:
        return [c for c in self.callers if c.population == population]


def _result(c: Caller) -> CallerResult:
    return CallerResult(c.name, c.population, c.family, c.half, c.group, c.tenant, c.model,
                        c.target, c.form)


def replay(half: CorpusHalf, *, gateway: Gateway | None = None,
           callers: list[Caller] | None = None, progress: Progress | None = None,
           trace: list[Outcome] | None = None) -> HalfResult:
    """Every request of `callers` (default: the whole half) in time order through
    `gateway` (default: the recommended configuration on the half's system prompts)."""
    started = time.perf_counter()
    chosen = list(half.callers if callers is None else callers)
    gw = gateway or Gateway(half.systems, embedder=CachingEmbedder())
    requests = timeline(chosen)
    misses, hits = gw.embedder.misses, gw.embedder.hits
    if progress is not None:
        progress(f"{half.half}: embedding prompts", 0, len(requests))
    gw.prime(requests)
    by_name = {c.name: c for c in chosen}
    results = {c.name: _result(c) for c in chosen}
    of_principal = {p: c.name for c in chosen for p in c.principals}
    members: dict[str, list[str]] = {}
    for c in chosen:
        if c.tenant:
            members.setdefault(c.tenant, []).append(c.name)
    thief_tenants = {c.tenant for c in chosen if c.population != "honest" and c.tenant}
    for c in chosen:
        results[c.name].shares_tenant_with_thief = (c.population == "honest"
                                                   and c.tenant in thief_tenants)
    history: dict[str, list[tuple[str, str]]] = {}
    received: dict[str, list[str]] = {}
    last_band: dict[str, str] = {}
    for i, r in enumerate(requests):
        res = results[r.caller]
        res.requests += 1
        conv = history.setdefault(r.conversation, []) if r.conversation else []
        out = gw.handle(r, conv)
        if trace is not None:
            trace.append(out)
        _tally(res, out, last_band)
        if not res.why and (out.band != "default" or out.crossings):
            res.why = _why(gw, r)
        if out.status == 200 and r.conversation and out.delivered:
            conv.append((r.text, out.delivered[0]))
        if by_name[r.caller].population == "thief":
            received.setdefault(r.caller, []).extend(out.delivered)
        _attribute(out.crossings, results, of_principal, members)
        if progress is not None and (i % 200 == 0 or i == len(requests) - 1):
            progress(f"{half.half}: {r.caller.split('/')[0][:28]}", i + 1, len(requests))
    _attribute(gw.flush(), results, of_principal, members)
    for name, c in by_name.items():
        if c.population == "thief":
            judge = Judge(str(c.notes["secret"]), tuple(c.notes["fragments"]), c.form)
            found = judge.found(received.get(name, []))
            res = results[name]
            res.secret_whole, res.secret_any, res.secret_parts = (found.whole, found.any,
                                                                  found.parts)
    checked = gw.semantic_checked
    return HalfResult(half.half, list(results.values()), time.perf_counter() - started,
                      len(requests), gw.distill_status, gw.embedder.misses - misses,
                      gw.embedder.hits - hits,
                      time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                      semantic_checked=checked)


def _attribute(crossings: list[Crossing], results: dict[str, CallerResult],
               of_principal: dict[str, str], members: dict[str, list[str]]) -> None:
    """Each alert to the callers it concerns: a key's to its caller, a tenant's (alone, or
    named by its key's alert when both started together) to all of the tenant's callers."""
    for crossing in crossings:
        hit: list[str] = []
        if crossing.subject_kind == "principal":
            owner = of_principal.get(crossing.subject)
            if owner:
                results[owner].alerts += 1
                hit.append(owner)
        if crossing.tenant and (crossing.subject_kind == "tenant"
                                or crossing.tenant_risk is not None):
            for name in members.get(crossing.tenant, []):
                results[name].tenant_alerts += 1
                hit.append(name)
        for name in dict.fromkeys(hit):
            if results[name].first_alert is None:
                results[name].first_alert = max(results[name].requests, 1)
            if not results[name].why:
                results[name].why = f"{crossing.subject_kind}: {crossing.risk.explain()}"


def _why(gw: Gateway, r: Request) -> str:
    """What lifts the caller's risk now: its key's and its tenant's parts."""
    parts = [f"key: {gw.book.risk(r.model, 'principal', r.principal, now=r.t).explain()}"]
    if r.tenant:
        parts.append(f"tenant: {gw.book.risk(r.model, 'tenant', r.tenant, now=r.t).explain()}")
    return "; ".join(parts)


def _tally(res: CallerResult, out: Outcome, last_band: dict[str, str]) -> None:
    res.risk_max = max(res.risk_max, out.risk)
    if out.status != 200:
        res.refused[out.reason] = res.refused.get(out.reason, 0) + 1
        return
    res.answered += 1
    res.bands[out.band] = res.bands.get(out.band, 0) + 1
    if out.band != last_band.get(res.name, "default"):
        res.band_changes += 1
    last_band[res.name] = out.band
    res.cut_by_band += int(out.cut_by_band)
    res.leak_stopped += int(out.leaked)


__all__ = ["CallerResult", "HalfResult", "Request", "replay"]
