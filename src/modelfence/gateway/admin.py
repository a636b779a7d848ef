"""The admin API: manage API keys over HTTP, guarded by the admin credential.

Enabled only when an admin token is configured. The admin token is compared by
HMAC digest in constant time, like API keys.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..audit.chain import Row
from ..audit.record import event_record
from ..audit.sinks import AuditSink, audit_store_of
from ..audit.store import Query
from ..errors import BadRequest, ConfigurationError, Forbidden, NotFound, Unauthenticated
from ..identity.apikeys import ApiKeys, digest, expiry_from, public_view
from ..identity.guard import bearer_token
from ..llm.risk import LlmRiskBook
from ..monitor.service import MonitorService
from ..policy.reload import PolicyReloader
from .guards import read_bounded
from .responses import error_response, json_response

log = logging.getLogger("modelfence.admin")
_MAX_ADMIN_BODY = 64 * 1024
Handler = Callable[[Request], Awaitable[Response]]


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


class AdminApi:
    def __init__(self, keys: ApiKeys, secret: bytes, admin_token: str | None, *,
                 policy: PolicyReloader, audit: AuditSink,
                 monitor: MonitorService | None = None,
                 llm_risk: LlmRiskBook | None = None) -> None:
        self._keys = keys
        self._monitor = monitor
        self._llm_risk = llm_risk
        self._policy = policy
        self._audit = audit
        self._secret = secret
        self._token_digest = digest(secret, admin_token) if admin_token else None

    def routes(self) -> list[Route]:
        return [
            Route("/admin/keys", self._audited("admin:create-key", self.create_key),
                  methods=["POST"]),
            Route("/admin/keys", self._audited("admin:list-keys", self.list_keys),
                  methods=["GET"]),
            Route("/admin/keys/{key_id}", self._audited("admin:revoke-key", self.revoke_key),
                  methods=["DELETE"]),
            Route("/admin/policy", self._audited("admin:show-policy", self.show_policy),
                  methods=["GET"]),
            Route("/admin/policy/reload",
                  self._audited("admin:reload-policy", self.reload_policy), methods=["POST"]),
            Route("/admin/alerts", self._audited("admin:list-alerts", self.list_alerts),
                  methods=["GET"]),
            Route("/admin/risk/{model}", self._audited("admin:show-risk", self.show_risk),
                  methods=["GET"]),
        ]

    def _audited(self, action: str, handler: Handler) -> Handler:
        """Every admin call, allowed or refused, leaves an audit record (never the token)."""
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            response = await handler(request)
            target = request.path_params.get("key_id") or getattr(
                request.state, "audit_target", None)
            reason = "ok" if response.status_code < 400 else f"status {response.status_code}"
            record = event_record(
                action=action, source=request.client.host if request.client else "unknown",
                status=response.status_code, reason=reason, principal="admin", target=target,
                started=started)
            try:
                await self._audit.write(record)
            except Exception as exc:  # the action is done; say loudly that its record is not
                log.error("audit record of %s (%s) not written: %s", action, record.request_id,
                          exc.__class__.__name__)
            return response
        return run

    def _authorize(self, request: Request) -> None:
        if self._token_digest is None:
            raise Forbidden("the admin API is disabled: configure admin.token_file or "
                            "MODELFENCE_ADMIN_TOKEN", reason="admin_disabled")
        token = bearer_token(request.headers.get("authorization"))
        if not hmac.compare_digest(digest(self._secret, token), self._token_digest):
            raise Unauthenticated(reason="bad_admin_token")

    async def create_key(self, request: Request) -> Response:
        try:
            self._authorize(request)
            body = await _bounded_json(request)
            try:
                spec = KeyCreate.model_validate(body)
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or "body"
                raise BadRequest(f"{field}: {err['msg']}") from None
            new = await self._keys.create(
                principal=spec.principal, tenant=spec.tenant, groups=spec.groups,
                models=spec.models, expires_at=expiry_from(spec.expires_in, spec.expires_at),
                description=spec.description, attributes=spec.attributes)
            log.info("admin created key %s for principal %s", new.record.key_id,
                     new.record.principal)
            request.state.audit_target = new.record.key_id
            return json_response({"key": new.token, **public_view(new.record)}, 201)
        except Exception as exc:
            return error_response(exc, where=" in admin create_key")[0]

    async def list_keys(self, request: Request) -> Response:
        try:
            self._authorize(request)
            return json_response({"keys": [public_view(r) for r in await self._keys.records()]})
        except Exception as exc:
            return error_response(exc, where=" in admin list_keys")[0]

    async def revoke_key(self, request: Request) -> Response:
        try:
            self._authorize(request)
            key_id = request.path_params["key_id"]
            if not await self._keys.revoke(key_id):
                raise NotFound(f"no key with id {key_id[:32]!r}")
            log.info("admin revoked key %s", key_id)
            return json_response({"key_id": key_id, "revoked": True})
        except Exception as exc:
            return error_response(exc, where=" in admin revoke_key")[0]


    async def show_policy(self, request: Request) -> Response:
        try:
            self._authorize(request)
            return json_response(self._policy.describe())
        except Exception as exc:
            return error_response(exc, where=" in admin show_policy")[0]

    async def reload_policy(self, request: Request) -> Response:
        """Reload the policy files; a bad set is refused (422) and the current one kept."""
        try:
            self._authorize(request)
            try:
                self._policy.reload()
            except ConfigurationError as exc:
                log.error("policy reload refused, keeping the current set: %s", exc)
                return json_response({"error": f"policy reload refused, the current set stays: "
                                               f"{exc}"}, 422)
            log.info("admin reloaded the policy set")
            return json_response({"reloaded": True, **self._policy.describe()})
        except Exception as exc:
            return error_response(exc, where=" in admin reload_policy")[0]


    async def list_alerts(self, request: Request) -> Response:
        """Newest alerts first, from the audit log (`?limit=N&model=NAME`)."""
        try:
            self._authorize(request)
            store = audit_store_of(self._audit)
            if store is None:
                raise NotFound("alerts are kept in the audit log; configure a sqlite:/// or "
                               "postgresql:// audit.sink to list them")
            limit = _int_param(request, "limit", 100, 1, 10_000)
            rows = await store.select(Query(action_prefix="alert:", limit=limit,
                                            model=request.query_params.get("model"),
                                            newest_first=True))
            return json_response({"alerts": [alert_view(r) for r in rows]})
        except Exception as exc:
            return error_response(exc, where=" in admin list_alerts")[0]

    async def show_risk(self, request: Request) -> Response:
        """A principal's or tenant's current risk on a model, with each detector's part."""
        try:
            self._authorize(request)
            model = request.path_params["model"]
            principal = request.query_params.get("principal")
            tenant = request.query_params.get("tenant")
            if (principal is None) == (tenant is None):
                raise BadRequest("give exactly one of ?principal=ID or ?tenant=ID")
            if self._llm_risk is not None and self._llm_risk.knows(model):
                kind = "principal" if principal is not None else "tenant"
                llm = self._llm_risk.risk(model, kind, str(principal or tenant))
                return json_response({
                    "model": model, "principal": principal, "tenant": tenant,
                    "risk": round(llm.score, 4), "flagged": llm.flagged,
                    "queries": llm.requests, "tokens": round(llm.tokens),
                    "detectors": {n: {"score": round(v, 4), "why": _LLM_WHY[n]}
                                  for n, v in llm.parts.items()}})
            if self._monitor is None or not self._monitor.watches(model):
                raise NotFound(f"model {model[:64]!r} is not monitored")
            risk = (self._monitor.risk(model, principal) if principal is not None
                    else self._monitor.tenant_risk(model, str(tenant)))
            return json_response({
                "model": model, "principal": principal, "tenant": tenant,
                "risk": round(risk.score, 4), "flagged": risk.flagged, "queries": risk.queries,
                "detectors": {n: {"score": round(r.score, 4), "why": r.why}
                              for n, r in risk.readings.items()}})
        except Exception as exc:
            return error_response(exc, where=" in admin show_risk")[0]


_LLM_WHY = {"leak": "answers that would have leaked the system prompt",
            "extraction": "prompts screened as system-prompt extraction",
            "injection": "prompts screened as injection",
            "probe": "refused requests for logprobs, logit_bias, echo or over a cap",
            "volume": "tokens far above its peers'"}


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
