"""Connects the console (modelfence.console) to the admin API's authenticator and audit log.

A pasted credential is checked exactly as an `Authorization: Bearer` header on the admin
API (same throttling of failures, same scoped tokens and OIDC admins); a console login needs
the `risk:read` scope, and every page and action checks the scope it needs from the session.
The session is bound to the credential it matched (a keyed fingerprint of its stored digest
and grant, checked against the credentials configured now) and ends on every worker and
replica at logout, through the audit store they share (console/liveness.py). An OIDC
admin's session also ends when its token expires, if that comes before session_lifetime_s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute

from ..audit.record import event_record
from ..audit.sinks import audit_store_of
from ..config import Settings
from ..console.app import Console, LoginResult, NavLink
from ..console.inv_actions import investigation_routes
from ..console.investigate import Investigation
from ..console.kit import ConsoleKit
from ..console.liveness import EndedSessions, SessionGate
from ..console.session import ConsoleSession, SessionSigner
from ..errors import ConfigurationError, Unavailable
from ..quota.budgets import BudgetStore
from ..watermark.bundle import load_signing_key
from ..watermark.guard import WatermarkGuard
from .admin import AdminApi
from .console_records import records_routes

log = logging.getLogger("modelfence.console")
LOGIN_SCOPE = "risk:read"
_AUDIT_WAIT_S = 5.0


def console_routes(settings: Settings, admin_api: AdminApi, *,
                   budget_store: BudgetStore | None = None,
                   watermark: WatermarkGuard | None = None) -> list[BaseRoute]:
    """The `/console` routes for the admin listener, over the admin API's stores and books
    (and the budget and watermark evidence stores the records pages read); none unless
    `console.enabled`."""
    if not settings.console.enabled:
        return []
    auth, audit = admin_api.auth, admin_api.audit
    signer = SessionSigner(settings.server_secret(),
                           lifetime_s=settings.console.session_lifetime_s)
    ended = EndedSessions(audit_store_of(audit), keep_s=settings.console.session_lifetime_s)
    if not ended.shared and settings.server.workers > 1:
        raise ConfigurationError(
            "console.enabled with server.workers > 1 needs an audit.sink of sqlite:/// or "
            "postgresql://: a logout is recorded there for every worker to see")
    configured = frozenset(signer.fingerprint(c) for c in auth.credential_ids())

    def bound(session: ConsoleSession) -> bool:
        """The credential that made the session is still configured (as it was)."""
        return session.credential in configured

    async def authenticate(credential: str, request: Request) -> LoginResult:
        if not audit.accepting:  # fail closed, as the admin API: no unrecorded login
            raise Unavailable("the audit log cannot record console logins now",
                              reason="audit_unavailable")
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
        headers.append((b"authorization", b"Bearer " + credential.encode("latin-1",
                                                                          "replace")))
        probe = Request({**request.scope, "headers": headers})
        try:
            admin = await auth.authenticate(probe, LOGIN_SCOPE)
        finally:
            request.state.admin_name = probe.state.admin_name
        expires = admin.expires_at
        return LoginResult(admin.name, admin.scopes, admin.models, admin.tenants,
                           credential=signer.fingerprint(auth.credential_id(credential, admin)),
                           not_after=int(expires.timestamp()) if expires is not None else None)

    async def record(action: str, admin: str, status: int, request: Request,
                     target: str | None, details: Mapping[str, Any] | None) -> None:
        entry = event_record(action=action, principal=admin, status=status,
                             reason="ok" if status < 400 else f"status {status}",
                             source=request.client.host if request.client else "unix",
                             target=target, details=dict(details) if details else None)
        try:
            await asyncio.wait_for(audit.write(entry), _AUDIT_WAIT_S)
        except Exception as exc:  # the login already happened or failed; say so loudly
            log.error("console: audit record of %s by %s failed: %s", action, admin,
                      exc.__class__.__name__)

    kit = ConsoleKit(signer, record, page_size=settings.console.page_size,
                     secure_cookie=settings.console.secure_cookie)
    pages: list[BaseRoute] = []
    nav: list[NavLink] = []
    key_file = settings.audit.checkpoint_key_file
    inv_pages, inv_nav = investigation_routes(Investigation(
        kit, admin_api.monitor, admin_api.keys, audit,
        load_signing_key(key_file) if key_file is not None else None,
        llm_risk=admin_api.llm_risk))
    pages += inv_pages
    nav += inv_nav
    rec_pages, rec_nav = records_routes(settings, admin_api, kit, budget_store=budget_store,
                                        watermark=watermark)
    pages += rec_pages
    nav += rec_nav
    return Console(kit, authenticate, pages, nav, SessionGate(kit, ended, bound)).routes()
