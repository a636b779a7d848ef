"""The investigation's actions, each a checked POST (`ConsoleKit.post`: session, same
origin, CSRF, scope) that leaves an audit record naming the admin, allowed or refused:

* pin a principal to a stricter band (risk:write) or lift the pin: `console:pin`,
  `console:unpin` (the pin itself is `monitor.pins`: a floor on every replica), on any
  model with bands: a classifier's output bands (private ones too), an LLM's control bands;
* acknowledge or resolve an alert (alerts:write): `console:alert-ack`,
  `console:alert-resolve`, targeting `alert:<seq>`; the log is where the state lives;
* revoke a key (keys:write): `console:revoke-key`, through the same key store as the admin
  API, so the key is refused on every replica within the key cache's second;
* export a principal's evidence (alerts:read): `console:export-evidence`, a JSON download.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import RequestError, StoreError
from ..monitor.pins import MAX_PIN_S, Pin
from ..watermark import bundle
from . import casefile
from .app import NavLink
from .headers import SECURITY_HEADERS
from .investigate import (
    MAX_SEQ,
    Investigation,
    InvestigationPages,
    explain,
    may_see,
    principal_url,
    tenants_of,
)
from .kit import Posted, whole

PIN_HOURS = (1, 24, 168, 720)  # the durations the principal page offers
_RECENT_MAX = 1000


class InvestigationActions:
    def __init__(self, inv: Investigation) -> None:
        self.inv = inv

    def routes(self) -> list[BaseRoute]:
        return [Route("/console/principal/pin", self.pin, methods=["POST"]),
                Route("/console/principal/unpin", self.unpin, methods=["POST"]),
                Route("/console/principal/evidence", self.export, methods=["POST"]),
                Route("/console/alerts/ack", self.ack, methods=["POST"]),
                Route("/console/alerts/resolve", self.resolve, methods=["POST"]),
                Route("/console/keys/revoke", self.revoke, methods=["POST"])]

    # helpers -------------------------------------------------------------------------------

    async def _refuse(self, posted: Posted, request: Request, action: str, status: int,
                      message: str, target: str | None) -> Response:
        await self.inv.kit.record(action, posted.session.admin, status, request, target=target,
                                  details={"refused": message})
        title = "Not found" if status == 404 else "Refused"
        return self.inv.kit.render("denied.html", status, session=posted.session, title=title,
                                   message=message)

    async def _subject(self, posted: Posted, *, pinning: bool = False
                       ) -> tuple[str, str] | None:
        """The form's model and principal, when the admin may act on them: a monitored
        model, or for a pin any model with bands (LLM, differentially private)."""
        inv, form = self.inv, posted.form
        model = (inv.page_model_of if pinning else inv.model_of)(posted.session,
                                                                 form.get("model"))
        principal = form.get("principal", "")
        keep = await inv.principal_filter(posted.session)
        if (model is None or not principal or len(principal) > 256
                or (keep is not None and not keep(principal))):
            return None
        return model, principal

    # pin -------------------------------------------------------------------------------------

    async def pin(self, request: Request) -> Response:
        posted = await self.inv.kit.post(request, "risk:write")
        if not isinstance(posted, Posted):
            return posted
        inv, form = self.inv, posted.form
        subject = await self._subject(posted, pinning=True)
        if subject is None or inv.monitor is None:
            return await self._refuse(posted, request, "console:pin", 404,
                                      "no such principal on a model you may see", None)
        model, principal = subject
        target = f"{model}/{principal}"
        starts = dict((name, start) for start, name in inv.monitor.bands(model))
        band, hours = form.get("band", ""), form.get("hours", "")
        if band not in starts or starts[band] <= 0.0:
            return await self._refuse(posted, request, "console:pin", 400,
                                      "choose a band above the model's lowest", target)
        if whole(hours, max(PIN_HOURS)) not in PIN_HOURS:
            return await self._refuse(posted, request, "console:pin", 400,
                                      f"a pin lasts one of {PIN_HOURS} hours", target)
        until = inv.kit.clock() + min(int(hours) * 3600.0, MAX_PIN_S)
        pin = Pin(model, principal, band, starts[band], until, posted.session.admin)
        try:
            await inv.monitor.pins.put(pin)
        except (StoreError, RequestError) as exc:
            status = exc.status if isinstance(exc, RequestError) else 503
            return await self._refuse(posted, request, "console:pin", status,
                                      f"the pin was not stored: {exc}", target)
        await inv.kit.record("console:pin", posted.session.admin, 303, request, target=target,
                             details={"band": band, "from_risk": starts[band],
                                      "until": _iso(until)})
        return _back(principal_url(model, principal))

    async def unpin(self, request: Request) -> Response:
        posted = await self.inv.kit.post(request, "risk:write")
        if not isinstance(posted, Posted):
            return posted
        subject = await self._subject(posted, pinning=True)
        if subject is None or self.inv.monitor is None:
            return await self._refuse(posted, request, "console:unpin", 404,
                                      "no such principal on a model you may see", None)
        model, principal = subject
        target = f"{model}/{principal}"
        try:
            found = await self.inv.monitor.pins.remove(model, principal)
        except StoreError as exc:
            return await self._refuse(posted, request, "console:unpin", 503,
                                      f"the pin was not lifted: {exc}", target)
        await self.inv.kit.record("console:unpin", posted.session.admin, 303, request,
                                  target=target, details={"was_pinned": found})
        return _back(principal_url(model, principal))

    # alerts ----------------------------------------------------------------------------------

    async def ack(self, request: Request) -> Response:
        return await self._alert(request, casefile.ACK)

    async def resolve(self, request: Request) -> Response:
        return await self._alert(request, casefile.RESOLVE)

    async def _alert(self, request: Request, action: str) -> Response:
        inv = self.inv
        posted = await inv.kit.post(request, "alerts:write")
        if not isinstance(posted, Posted):
            return posted
        seq = posted.form.get("seq", "")
        position = whole(seq, MAX_SEQ - 1)
        store = inv.store
        alert = (await casefile.alert_by_seq(store, position)
                 if store is not None and position else None)
        if alert is None or not may_see(posted.session, alert):
            return await self._refuse(posted, request, action, 404, "no such alert",
                                      f"alert:{seq[:20]}")
        await inv.kit.record(action, posted.session.admin, 303, request, target=alert.target,
                             details={"model": alert.model, "principal": alert.principal})
        if len(inv.recent) >= _RECENT_MAX:
            inv.recent.pop(next(iter(inv.recent)))
        inv.recent[alert.target] = (casefile.STATE_OF[action], posted.session.admin,
                                    inv.kit.clock())
        back = posted.form.get("back") == "principal" and alert.model and alert.principal
        return _back(principal_url(alert.model, alert.principal)  # type: ignore[arg-type]
                     if back else "/console/alerts")

    # keys ------------------------------------------------------------------------------------

    async def revoke(self, request: Request) -> Response:
        inv = self.inv
        posted = await inv.kit.post(request, "keys:write")
        if not isinstance(posted, Posted):
            return posted
        key_id = posted.form.get("key_id", "")[:64]
        session = posted.session
        record = await inv.keys.store.get(key_id) if key_id else None
        covered = record is not None and session.covers_tenant(record.tenant) and (
            "*" in session.models or (bool(record.models)
                                      and all(session.covers(m) for m in record.models)))
        if record is None or not covered:
            return await self._refuse(posted, request, "console:revoke-key", 404,
                                      "no such key", key_id or None)
        if not await inv.keys.revoke(key_id):
            return await self._refuse(posted, request, "console:revoke-key", 404,
                                      "no such key", key_id)
        await inv.kit.record("console:revoke-key", session.admin, 303, request, target=key_id,
                             details={"principal": record.principal, "tenant": record.tenant})
        model = inv.model_of(session, posted.form.get("model"))
        return _back(principal_url(model, record.principal) if model else "/console/models")

    # evidence --------------------------------------------------------------------------------

    async def export(self, request: Request) -> Response:
        inv = self.inv
        posted = await inv.kit.post(request, "alerts:read")
        if not isinstance(posted, Posted):
            return posted
        subject = await self._subject(posted)
        store = inv.store
        if subject is None or inv.monitor is None or store is None:
            why = ("no such principal on a model you may see" if store is not None else
                   "evidence comes from the audit log: configure a sqlite or postgresql sink")
            return await self._refuse(posted, request, "console:export-evidence", 404, why,
                                      None)
        model, principal = subject
        risk = inv.monitor.risk(model, principal)
        pin = inv.monitor.pins.get(model, principal)
        explanation = {**explain(risk), "band": inv.band(model, risk.score),
                       "pin": None if pin is None else {"band": pin.band, "by": pin.by,
                                                         "until": _iso(pin.until)}}
        doc = await casefile.evidence(store, model=model, principal=principal,
                                      explanation=explanation, public_key=inv.public_key,
                                      exported_by=posted.session.admin,
                                      model_only="*" not in posted.session.models,
                                      tenants=tenants_of(posted.session))
        await inv.kit.record("console:export-evidence", posted.session.admin, 200, request,
                             target=f"{model}/{principal}",
                             details={"records": len(doc["records"]),
                                      "alerts": len(doc["alerts"]),
                                      "chain_ok": doc["chain"].get("ok"),
                                      "signed": inv.signing_key is not None})
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"evidence-{model}-{principal}")[:120]
        return Response(_signed(doc, inv), media_type="application/json", headers={
                            **SECURITY_HEADERS,
                            "content-disposition": f'attachment; filename="{name}.json"'})


def _signed(doc: dict[str, Any], inv: Investigation) -> bytes:
    """The bundle as the canonical (RFC 8785) bytes of it signed with the audit checkpoint
    key, as ownership evidence is (`watermark.bundle`: checked with the public key alone);
    indented JSON, unsigned, without a key."""
    if inv.signing_key is None:
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    return bundle.jcs(bundle.sign(doc, inv.signing_key))


def _back(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def investigation_routes(inv: Investigation) -> tuple[list[BaseRoute], list[NavLink]]:
    """The investigation's pages and actions, and its navigation entries."""
    pages = InvestigationPages(inv)
    return [*pages.routes(), *InvestigationActions(inv).routes()], pages.nav()
