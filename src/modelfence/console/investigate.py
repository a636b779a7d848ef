"""The console's investigation pages: monitored models and their bands, callers ranked by
risk, a principal's page (why it is risky, its band, pin, keys, risk over time, alerts) and
the alerts list. The actions on them (pin, acknowledge, revoke, export) are in
`inv_actions`.

Rankings come from the monitor's own tables (`Monitor.top`: a heap of one page over one
pass); with several workers or replicas sharing `monitor.shared`, every replica applies
every observation, so each ranks the same callers (as of the observations it has read).
A scoped admin sees only its models, and only principals of its tenants (by their keys).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from ..audit.sinks import AuditSink, audit_store_of
from ..audit.store import AuditStore
from ..identity.apikeys import ApiKeys, public_view
from ..llm.risk import LlmRisk, LlmRiskBook
from ..monitor.score import Kind, Monitor, Risk
from ..monitor.service import MonitorService, band_counts
from . import casefile
from .app import NavLink
from .kit import ConsoleKit, whole
from .plot import risk_plot
from .session import ConsoleSession

RECENT_S = 10.0  # an action shows at once here; from the log (every replica) after a flush
#: Deepest rank shown: past it a caller is no lead worth following, and the heap stays small
#: (100,000 callers: the 2,000 riskiest in 89 ms, a full sort 224 ms; 4 December 2026)
MAX_RANK = 2000
MAX_SEQ = 2**62  # highest audit record position a query or form may name
_KINDS: tuple[Kind, ...] = ("principal", "tenant")


@dataclass(eq=False)
class Investigation:
    """What the investigation pages and actions read and change."""

    kit: ConsoleKit
    monitor: MonitorService | None
    keys: ApiKeys
    audit: AuditSink
    signing_key: Ed25519PrivateKey | None = None  # the audit checkpoint key, if configured
    llm_risk: LlmRiskBook | None = None  # the LLM models' risk (their principals' pages)
    #: target -> (state, admin, when) of alerts this process acted on in the last
    #: `RECENT_S`, until the audit writer's commit makes them readable to every replica
    recent: dict[str, tuple[str, str, float]] = field(default_factory=dict)

    @property
    def public_key(self) -> Ed25519PublicKey | None:
        return None if self.signing_key is None else self.signing_key.public_key()

    @property
    def store(self) -> AuditStore | None:
        return audit_store_of(self.audit)

    def models(self, session: ConsoleSession) -> list[str]:
        if self.monitor is None:
            return []
        return [m for m in self.monitor.monitors if session.covers(m)]

    def model_of(self, session: ConsoleSession, name: str | None) -> str | None:
        """`name` when it is a monitored model the admin covers (else None: a 404 that
        says nothing about models it may not see)."""
        return name if name is not None and name in self.models(session) else None

    def pinnable(self, session: ConsoleSession) -> list[str]:
        """The models with bands the admin covers, monitored or not (an LLM model's control
        bands, a differentially private model's): a principal may be pinned on them."""
        if self.monitor is None:
            return []
        return [m for m in self.monitor.pin_bands if session.covers(m)]

    def page_model_of(self, session: ConsoleSession, name: str | None) -> str | None:
        """`name` when a principal's page may show it: monitored, or with bands to pin."""
        if name is None:
            return None
        return name if name in self.models(session) or name in self.pinnable(session) else None

    async def principal_filter(self, session: ConsoleSession) -> Callable[[str], bool] | None:
        """Which principals a tenant-scoped admin may see: those with a key of its tenants."""
        if "*" in session.tenants:
            return None
        mine = {r.principal for r in await self.keys.records() if session.covers_tenant(r.tenant)}
        return mine.__contains__

    def band(self, model: str, score: float) -> str | None:
        assert self.monitor is not None
        return self.monitor.band(model, score)

    async def alerts(self, store: AuditStore, **query: Any) -> list[casefile.AlertView]:
        """`casefile.alerts`, with what this process did to them since the audit writer's
        last commit (a batched writer makes a record readable within its flush interval)."""
        found = await casefile.alerts(store, **query)
        fresh = self.kit.clock() - RECENT_S
        out = []
        for alert in found:
            state, admin, at = self.recent.get(alert.target, ("", "", fresh))
            out.append(casefile.with_state(alert, (state, admin)) if at > fresh else alert)
        return out

    def not_found(self, session: ConsoleSession, what: str) -> Response:
        return self.kit.render("denied.html", 404, session=session, title="Not found",
                               message=what)


def principal_url(model: str, principal: str) -> str:
    return "/console/principal?" + urlencode({"model": model, "id": principal})


class InvestigationPages:
    """GET pages: models, ranking, principal, alerts."""

    def __init__(self, inv: Investigation) -> None:
        self.inv = inv

    def routes(self) -> list[BaseRoute]:
        kit = self.inv.kit
        return [kit.page_route("/console/models", "risk:read", self.models_page),
                kit.page_route("/console/ranking", "risk:read", self.ranking),
                kit.page_route("/console/principal", "risk:read", self.principal),
                kit.page_route("/console/alerts", "alerts:read", self.alerts)]

    @staticmethod
    def nav() -> list[NavLink]:
        return [NavLink("/console/models", "Models", "risk:read"),
                NavLink("/console/alerts", "Alerts", "alerts:read")]

    async def models_page(self, request: Request, session: ConsoleSession) -> Response:
        inv = self.inv
        keep = await inv.principal_filter(session)  # a tenant's admin: its principals' pins
        rows = []
        monitored = inv.models(session)
        for model in [*monitored, *(m for m in inv.pinnable(session) if m not in monitored)]:
            assert inv.monitor is not None
            bands = inv.monitor.bands(model)
            row: dict[str, Any] = {
                "name": model, "monitored": model in monitored,
                "llm": inv.llm_risk is not None and inv.llm_risk.watches(model),
                "bands": [{"from": start, "name": name, "principals": None}
                          for start, name in bands],
                "pins": [{"principal": p.principal, "band": p.band, "by": p.by,
                          "until": utc(p.until)} for p in inv.monitor.pins.live()
                         if p.model == model and (keep is None or keep(p.principal))]}
            if model in monitored:
                risks, tenants = _standing(inv.monitor.monitors[model], session, keep)
                counts = band_counts(bands, np.fromiter((r.score for r in risks), np.float64,
                                                        count=len(risks)))
                for band, n in zip(row["bands"], counts, strict=True):
                    band["principals"] = n
                row.update(principals=len(risks), tenants=tenants,
                           flagged=sum(r.flagged for r in risks))
            rows.append(row)
        return inv.kit.render("inv-models.html", title="Models and their bands",
                              session=session, models=rows, scoped=keep is not None)

    async def ranking(self, request: Request, session: ConsoleSession) -> Response:
        inv = self.inv
        q = request.query_params
        model = inv.model_of(session, q.get("model"))
        if model is None or inv.monitor is None:
            return inv.not_found(session, "no such monitored model")
        kind = q.get("kind", "principal")
        size = inv.kit.page_size
        pages = max(1, MAX_RANK // size)
        n = whole(q.get("page", "0"), pages - 1)
        if kind not in _KINDS or n is None:
            return inv.kit.render("denied.html", 400, session=session, title="Bad request",
                                  message=f"kind is principal or tenant; page 0 to "
                                          f"{pages - 1}")
        keep = (await inv.principal_filter(session) if kind == "principal" else
                None if "*" in session.tenants else session.covers_tenant)
        top = inv.monitor.monitors[model].top(kind, (n + 1) * size, keep)
        rows = [_ranked(inv, model, kind, n * size + i + 1, name, risk)
                for i, (name, risk) in enumerate(top[n * size:])]
        return inv.kit.render("inv-ranking.html", title=f"Riskiest {kind}s of {model}",
                              session=session, model=model, kind=kind, rows=rows, page=n,
                              more=len(top) == (n + 1) * size and n + 1 < pages)

    async def principal(self, request: Request, session: ConsoleSession) -> Response:
        inv = self.inv
        model = inv.page_model_of(session, request.query_params.get("model"))
        principal = request.query_params.get("id", "")
        keep = await inv.principal_filter(session)
        if (model is None or inv.monitor is None or not principal or len(principal) > 256
                or (keep is not None and not keep(principal))):
            return inv.not_found(session, "no such principal on a model you may see")
        monitored = model in inv.monitor.monitors
        risk, explanation = _verdict(inv, model, principal)
        pin = inv.monitor.pins.get(model, principal)
        keys = [public_view(r) for r in await inv.keys.records()
                if r.principal == principal and session.covers_tenant(r.tenant)]
        store = inv.store
        series = ([] if store is None else  # a tenant's admin: that tenant's calls only
                  await casefile.risk_history(store, model, principal, tenants_of(session)))
        alerts = ([] if store is None or not session.allows("alerts:read") else
                  [a for a in await inv.alerts(store, limit=20, principal=principal,
                                                model=model) if may_see(session, a)])
        bands = inv.monitor.bands(model)
        return inv.kit.render(
            "inv-principal.html", title=f"Principal {principal} on {model}", session=session,
            model=model, principal=principal, risk=risk, monitored=monitored,
            band=inv.band(model, risk.score if risk is not None else 0.0),
            explanation=explanation, pin=pin, pin_until=pin and utc(pin.until),
            back="principal",
            bands=bands, keys=keys, plot=risk_plot(series, bands),
            points=casefile.series_table(series)[:50], alerts=alerts,
            audited=store is not None)

    async def alerts(self, request: Request, session: ConsoleSession) -> Response:
        inv = self.inv
        store = inv.store
        before = request.query_params.get("before")
        position = whole(before, MAX_SEQ)
        if before is not None and not position:
            return inv.kit.render("denied.html", 400, session=session, title="Bad request",
                                  message="before is a record number")
        found: list[casefile.AlertView] = []
        if store is not None:
            upto = position - 1 if position else None
            found = await inv.alerts(store, limit=inv.kit.page_size, upto_seq=upto)
        size = len(found)
        shown = [a for a in found if may_see(session, a)]
        return inv.kit.render("inv-alerts.html", title="Alerts", session=session,
                              alerts=shown, audited=store is not None,
                              next_before=found[-1].seq if size == inv.kit.page_size else None)


def tenants_of(session: ConsoleSession) -> frozenset[str] | None:
    """The tenants a tenant-limited admin holds; None for an admin of every tenant."""
    return None if "*" in session.tenants else session.tenants


def may_see(session: ConsoleSession, alert: casefile.AlertView) -> bool:
    """An alert within the admin's models and tenants (a scoped admin sees none that names
    no model, or no tenant when it is limited to some)."""
    models = "*" in session.models or (alert.model is not None and session.covers(alert.model))
    return models and ("*" in session.tenants or session.covers_tenant(alert.tenant))


def explain(risk: Risk) -> dict[str, Any]:
    """The monitor's verdict as the page and the evidence bundle show it."""
    return {"risk": round(risk.score, 4), "raw_risk": round(risk.raw, 4),
            "flagged": risk.flagged, "queries": risk.queries,
            "summary": risk.explain(),
            "detectors": [{"name": n, "score": round(r.score, 4), "why": r.why}
                          for n, r in sorted(risk.readings.items(),
                                             key=lambda nr: -nr[1].score)]}


def _standing(monitor: Monitor, session: ConsoleSession,
              keep: Callable[[str], bool] | None) -> tuple[list[Risk], int]:
    """The principals' risks and the number of tenants the models page counts: every
    caller for an admin of every tenant; a tenant's admin, its own tenants' (by their keys)
    only, as on the ranking (one pass over the callers, as `Monitor.top`)."""
    if keep is None:
        return list(monitor.standing("principal")), monitor.count("tenant")
    mine = monitor.top("principal", monitor.count("principal"), keep)
    tenants = monitor.top("tenant", monitor.count("tenant"), session.covers_tenant)
    return [risk for _, risk in mine], len(tenants)


def _verdict(inv: Investigation, model: str, principal: str
             ) -> tuple[Risk | LlmRisk | None, dict[str, Any]]:
    """The principal's risk on `model` and its explanation: the monitor's, the LLM risk
    book's, or none (a model with bands but no monitor: a pin still sets its band)."""
    assert inv.monitor is not None
    if model in inv.monitor.monitors:
        risk = inv.monitor.risk(model, principal)
        return risk, explain(risk)
    if inv.llm_risk is not None and inv.llm_risk.watches(model):
        llm = inv.llm_risk.risk(model, "principal", principal)
        return llm, {"summary": llm.explain(), "detectors": [
            {"name": n, "score": round(v, 4), "why": ""}
            for n, v in sorted(llm.parts.items(), key=lambda nv: -nv[1])]}
    return None, {"summary": "this model is not monitored: no risk score", "detectors": []}


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _ranked(inv: Investigation, model: str, kind: str, rank: int, name: str,
            risk: Risk) -> dict[str, Any]:
    assert inv.monitor is not None
    pinned = kind == "principal" and inv.monitor.pins.get(model, name) is not None
    return {"rank": rank, "name": name, "score": risk.score, "raw": risk.raw,
            "flagged": risk.flagged, "queries": risk.queries,
            "band": inv.band(model, max(risk.score, inv.monitor.pins.floor(model, name)
                                        if kind == "principal" else 0.0)),
            "pinned": pinned, "why": risk.explain(),
            "url": principal_url(model, name) if kind == "principal" else None}

