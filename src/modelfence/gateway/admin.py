"""The admin API: manage API keys, policy, risk and alerts over HTTP, on the admin listener.

Every route names the scope it needs; `AdminAuthenticator` says who is calling and
whether that admin holds the scope, and a scoped admin's models and tenants bound what it
may see and mint, its groups and attribute names what a key it mints may carry. Every
call, allowed, refused or throttled, leaves an audit record naming the admin (never its
credential) and the caller's address. Nothing fails open: an action is refused (503)
while the audit log cannot take records, and its answer leaves only after its record is
written; a key whose record fails is revoked before its token leaves.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..audit.chain import Row
from ..audit.record import event_record
from ..audit.sinks import AuditSink, audit_store_of
from ..audit.store import Query
from ..errors import (
    BadRequest,
    ConfigurationError,
    Forbidden,
    NotFound,
    StoreError,
    Unavailable,
)
from ..identity.apikeys import ApiKeys, expiry_from, public_view
from ..kernel.body import read_bounded
from ..kernel.responses import error_response, json_response
from ..llm.risk import LlmRiskBook
from ..monitor.service import MonitorService

if TYPE_CHECKING:
    from ..privacy.wiring import Privacy
from ..policy.reload import PolicyReloader
from .admin_auth import UNKNOWN, AdminAuthenticator, AdminIdentity

log = logging.getLogger("modelfence.admin")
_MAX_ADMIN_BODY = 64 * 1024
_AUDIT_WAIT_S = 10.0  # an admin action whose record takes longer is answered as unrecorded
Handler = Callable[[Request, AdminIdentity], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    principal: str
    tenant: str
    groups: list[str] = Field(default_factory=list, max_length=64)
    models: list[str] = Field(default_factory=list, max_length=1024)
    expires_at: datetime | None = None
    expires_in: str | None = None
    description: str = Field("", max_length=200)
    attributes: dict[str, Any] = Field(default_factory=dict, max_length=32)


@dataclass(frozen=True, eq=False)  # one API per gateway: compared by identity
class AdminApi:
    """The admin routes, over the gateway's keys, policy, audit log and risk books."""

    keys: ApiKeys
    auth: AdminAuthenticator
    _: KW_ONLY
    policy: PolicyReloader
    audit: AuditSink
    monitor: MonitorService | None = None
    llm_risk: LlmRiskBook | None = None
    privacy: Privacy | None = None  # ε spent, on models with a private band

    def routes(self) -> list[Route]:
        table: list[tuple[str, str, str, str, Handler]] = [
            ("/admin/keys", "POST", "admin:create-key", "keys:write", self.create_key),
            ("/admin/keys", "GET", "admin:list-keys", "keys:read", self.list_keys),
            ("/admin/keys/{key_id}", "DELETE", "admin:revoke-key", "keys:write",
             self.revoke_key),
            ("/admin/policy", "GET", "admin:show-policy", "policy:read", self.show_policy),
            ("/admin/policy/reload", "POST", "admin:reload-policy", "policy:write",
             self.reload_policy),
            ("/admin/alerts", "GET", "admin:list-alerts", "alerts:read", self.list_alerts),
            ("/admin/risk/{model}", "GET", "admin:show-risk", "risk:read", self.show_risk),
        ]
        return [Route(path, self._audited(action, scope, handler), methods=[method])
                for path, method, action, scope, handler in table]

    def _audited(self, action: str, scope: str, handler: Handler) -> Endpoint:
        """Authorize, run, and audit every admin call, allowed or refused (never the token).

        Fail closed, as model calls do: nothing is done while the audit log cannot take a
        record (503), and an answer leaves only once its record is written (see
        `_unrecorded` for an action whose record fails).
        """
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            if not self.audit.accepting:
                log.warning("%s refused: the audit log cannot record it now", action)
                return error_response(Unavailable(
                    "the audit log cannot record admin actions now; nothing was done",
                    reason="audit_unavailable"))[0]
            try:
                admin = await self.auth.authenticate(request, scope)
                response = await handler(request, admin)
            except Exception as exc:
                response = error_response(exc, where=f" in {action}")[0]
            target = request.path_params.get("key_id") or getattr(
                request.state, "audit_target", None)
            reason = "ok" if response.status_code < 400 else f"status {response.status_code}"
            record = event_record(
                action=action, source=request.client.host if request.client else "unix",
                status=response.status_code, reason=reason,
                principal=getattr(request.state, "admin_name", UNKNOWN), target=target,
                started=started, details=getattr(request.state, "audit_details", None))
            try:
                await asyncio.wait_for(self.audit.write(record), _AUDIT_WAIT_S)
            except Exception as exc:
                log.error("audit record of %s (%s) not written: %s", action, record.request_id,
                          exc.__class__.__name__)
                if response.status_code < 400:
                    response = await self._unrecorded(request, action)
            return response
        return run

    async def _unrecorded(self, request: Request, action: str) -> Response:
        """The answer to an action whose record could not be written: a new key is revoked
        before its token leaves; a revocation or reload stands and says so; a read is not
        answered."""
        key_id = getattr(request.state, "revoke_if_unrecorded", None)
        if key_id is not None:
            try:
                await self.keys.revoke(key_id)
            except Exception as exc:  # its token never leaves, so nobody can use it
                log.error("key %s could not be revoked after its audit record failed: %s",
                          key_id, exc.__class__.__name__)
            message = f"key {key_id} revoked unused: its audit record could not be written"
        elif request.method == "GET":
            message = f"{action} not answered: its audit record could not be written"
        else:
            message = f"{action} took effect, but its audit record could not be written"
        return error_response(Unavailable(message, reason="audit_unavailable"))[0]

    async def create_key(self, request: Request, admin: AdminIdentity) -> Response:
        body = await _bounded_json(request)
        try:
            spec = KeyCreate.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "body"
            raise BadRequest(f"{field}: {err['msg']}") from None
        request.state.audit_details = {"requested": spec.model_dump(mode="json")}
        if not admin.covers_all(spec.models):
            raise Forbidden(f"{admin.name} may mint keys only for some of: "
                            f"{admin.describe_models()}", reason="admin_models")
        refused = admin.refusals(spec.tenant, spec.groups, spec.attributes)
        if refused:
            raise Forbidden(f"{admin.name} may not grant {'; '.join(refused)}",
                            reason="admin_grant")
        new = await self.keys.create(
            principal=spec.principal, tenant=spec.tenant, groups=spec.groups,
            models=spec.models, expires_at=expiry_from(spec.expires_in, spec.expires_at),
            description=spec.description, attributes=spec.attributes)
        log.info("%s created key %s for principal %s", admin.name, new.record.key_id,
                 new.record.principal)
        view = public_view(new.record)
        request.state.audit_target = new.record.key_id
        request.state.audit_details = view  # what was granted, as the CLI's record says
        request.state.revoke_if_unrecorded = new.record.key_id
        return json_response({"key": new.token, **view}, 201)

    async def list_keys(self, request: Request, admin: AdminIdentity) -> Response:
        records = [r for r in await self.keys.records()
                   if admin.covers_key(r.models, r.tenant)]
        return json_response({"keys": [public_view(r) for r in records]})

    async def revoke_key(self, request: Request, admin: AdminIdentity) -> Response:
        key_id = request.path_params["key_id"]
        if "*" not in admin.models or "*" not in admin.tenants:  # one it cannot see
            record = next((r for r in await self.keys.records() if r.key_id == key_id), None)
            if record is None or not admin.covers_key(record.models, record.tenant):
                raise NotFound(f"no key with id {key_id[:32]!r}")
        if not await self.keys.revoke(key_id):
            raise NotFound(f"no key with id {key_id[:32]!r}")
        request.state.audit_details = await self._view(key_id)  # what was revoked
        log.info("%s revoked key %s", admin.name, key_id)
        return json_response({"key_id": key_id, "revoked": True})

    async def _view(self, key_id: str) -> dict[str, object] | None:
        """A key's public view for its audit record; a store that fails now (the change is
        done) leaves the record with its id alone."""
        try:
            return next((public_view(r) for r in await self.keys.records()
                         if r.key_id == key_id), None)
        except StoreError:
            return None

    async def show_policy(self, request: Request, admin: AdminIdentity) -> Response:
        return json_response(self.policy.describe())

    async def reload_policy(self, request: Request, admin: AdminIdentity) -> Response:
        """Reload the policy files; a bad set is refused (422) and the current one kept."""
        try:
            self.policy.reload()
        except ConfigurationError as exc:
            log.error("policy reload refused, keeping the current set: %s", exc)
            return json_response({"error": f"policy reload refused, the current set stays: "
                                           f"{exc}"}, 422)
        log.info("%s reloaded the policy set", admin.name)
        return json_response({"reloaded": True, **self.policy.describe()})

    async def list_alerts(self, request: Request, admin: AdminIdentity) -> Response:
        """Newest alerts first, from the audit log (`?limit=N&model=NAME`), of the admin's
        models."""
        store = audit_store_of(self.audit)
        if store is None:
            raise NotFound("alerts are kept in the audit log; configure a sqlite:/// or "
                           "postgresql:// audit.sink to list them")
        limit = _int_param(request, "limit", 100, 1, 10_000)
        model = request.query_params.get("model")
        if model is not None and not admin.covers(model):
            raise Forbidden(f"{admin.name} may read alerts only of: {admin.describe_models()}",
                            reason="admin_models")
        rows = await store.select(Query(action_prefix="alert:", limit=limit, model=model,
                                        newest_first=True))
        return json_response({"alerts": [alert_view(r) for r in rows if admin.covers(r.model)]})

    async def show_risk(self, request: Request, admin: AdminIdentity) -> Response:
        """A principal's or tenant's current risk on a model, with each detector's part."""
        model = request.path_params["model"]
        if not admin.covers(model):
            raise Forbidden(f"{admin.name} may read risk only of: {admin.describe_models()}",
                            reason="admin_models")
        principal = request.query_params.get("principal")
        tenant = request.query_params.get("tenant")
        if (principal is None) == (tenant is None):
            raise BadRequest("give exactly one of ?principal=ID or ?tenant=ID")
        if self.llm_risk is not None and self.llm_risk.watches(model):
            kind = "principal" if principal is not None else "tenant"
            llm = self.llm_risk.risk(model, kind, str(principal or tenant))
            return json_response({
                "model": model, "principal": principal, "tenant": tenant,
                "risk": round(llm.score, 4), "flagged": llm.flagged,
                "queries": llm.queries, "tokens": round(llm.tokens),
                "detectors": {n: {"score": round(v, 4), "why": _LLM_WHY.get(n, n)}
                              for n, v in llm.parts.items()}})
        private = await self._privacy(model, principal, tenant)
        if self.monitor is None or not self.monitor.watches(model):
            if private:
                return json_response({"model": model, "principal": principal,
                                      "tenant": tenant, **private})
            raise NotFound(f"model {model[:64]!r} is not monitored")
        risk = (self.monitor.risk(model, principal) if principal is not None
                else self.monitor.tenant_risk(model, str(tenant)))
        episode = risk.episode
        return json_response({
            "model": model, "principal": principal, "tenant": tenant, **private,
            "risk": round(risk.score, 4), "raw_risk": round(risk.raw, 4),
            "flagged": risk.flagged, "queries": risk.queries,
            "band": self.monitor.band(model, risk.score),
            "episode": {"since": _when(episode.since),
                        "hold_until": _when(episode.hold_until)} if risk.flagged else None,
            "detectors": {n: {"score": round(r.score, 4), "why": r.why}
                          for n, r in risk.readings.items()}})


    async def _privacy(self, model: str, principal: str | None, tenant: str | None
                       ) -> dict[str, Any]:
        """`privacy`: ε spent and the budget, where the model has a private band."""
        if self.privacy is None or not self.privacy.watches(model):
            return {}
        spent = await self.privacy.spent(model, principal or "", tenant or "")
        budget = self.privacy.describe()
        if principal is not None:
            return {"privacy": {"epsilon_spent": round(spent.principal, 6),
                                "epsilon_budget": budget["principal_epsilon"], **budget}}
        return {"privacy": {"epsilon_spent": round(spent.tenant, 6),
                            "epsilon_budget": budget["tenant_epsilon"], **budget}}


_LLM_WHY = {"leak": "answers that would have leaked the system prompt",
            "extraction": "prompts screened as system-prompt extraction",
            "injection": "prompts screened as injection",
            "probe": "requests for logprobs, logit_bias or echo beyond its band (refused or "
                     "clamped)",
            "sampling": "n or best_of over the cap, beyond what honest clients ask",
            "clamp": "max_tokens over the cap (at most a small part: SDKs send it)",
            "volume": "tokens far above its peers'",
            "distill": "prompt windows unlike the model's benign traffic (distillation)"}


def _when(ts: float) -> str | None:
    """A unix time as ISO 8601 (UTC), or None for never."""
    return datetime.fromtimestamp(ts, UTC).isoformat() if math.isfinite(ts) else None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"?{name}= must be a whole number from {low} to {high}")
    return int(text)


def alert_view(row: Row) -> dict[str, Any]:
    """An alert as the API and CLI show it: when, what, whom, and why."""
    record = orjson.loads(row.payload)
    return {"seq": row.seq, "time": record.get("time"), "action": row.action,
            "model": row.model, "principal": row.principal, "tenant": row.tenant,
            "risk": record.get("risk"), "reason": record.get("reason")}


async def _bounded_json(request: Request) -> Any:
    body = await read_bounded(request, _MAX_ADMIN_BODY)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
