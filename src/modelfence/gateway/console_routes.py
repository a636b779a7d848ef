"""Connects the console (modelfence.console) to the admin API's authenticator and audit log.

A pasted credential is checked exactly as an `Authorization: Bearer` header on the admin
API (same throttling of failures, same scoped tokens and OIDC admins); a console login needs
the `risk:read` scope, and every page and action checks the scope it needs from the session.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.routing import Route

from ..audit.record import event_record
from ..audit.sinks import AuditSink
from ..config import Settings
from ..console.app import Console, LoginResult
from ..console.session import SessionSigner
from ..errors import Unavailable
from .admin_auth import AdminAuthenticator

log = logging.getLogger("modelfence.console")
LOGIN_SCOPE = "risk:read"
_AUDIT_WAIT_S = 5.0


def console_routes(settings: Settings, auth: AdminAuthenticator, audit: AuditSink) -> list[Route]:
    """The `/console` routes for the admin listener; none unless `console.enabled`."""
    if not settings.console.enabled:
        return []
    signer = SessionSigner(settings.server_secret(),
                           lifetime_s=settings.console.session_lifetime_s)

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
        return LoginResult(admin.name, admin.scopes, admin.models, admin.tenants)

    async def record(action: str, admin: str, status: int, request: Request) -> None:
        entry = event_record(action=action, principal=admin, status=status,
                             reason="ok" if status < 400 else f"status {status}",
                             source=request.client.host if request.client else "unix")
        try:
            await asyncio.wait_for(audit.write(entry), _AUDIT_WAIT_S)
        except Exception as exc:  # the login already happened or failed; say so loudly
            log.error("console: audit record of %s by %s failed: %s", action, admin,
                      exc.__class__.__name__)

    return Console(signer, authenticate, record).routes()
