"""Console sessions: a signed cookie that names the admin and its scopes, and its CSRF token.

The admin's credential never enters the cookie: login authenticates it once and the cookie
carries only what AdminAuthenticator concluded (name, scopes, models, tenants), a keyed
fingerprint of the configured credential it matched (`credential`, so that removing or
rotating that credential ends the session: liveness.py) and an expiry, signed with a key
derived from the server secret. The signature proves who logged in and until when, not that
the session was not ended since: liveness.py checks that on every request. Every
comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from ..errors import Unauthenticated

COOKIE_NAME = "modelfence_console"
_SESSION_LABEL = b"modelfence console session v1"
_CSRF_LABEL = b"modelfence console csrf v1"
_CREDENTIAL_LABEL = b"modelfence console credential v1"
_SID_LABEL = b"modelfence console ended session v1"
_MAX_COOKIE = 4096


def derive_key(server_secret: bytes) -> bytes:
    """A key of its own for the console, so a cookie never signs anything else."""
    return hmac.new(server_secret, _SESSION_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """What a valid cookie says: who, with which grants, until when, under which id."""

    sid: str
    admin: str
    scopes: frozenset[str]
    models: frozenset[str]
    tenants: frozenset[str]
    expires: int
    credential: str = ""  # fingerprint of the configured credential that logged in

    @property
    def ended_id(self) -> str:
        """What a logout records to end this session everywhere: a hash of its id, never
        the cookie (which would sign in whoever read the audit log)."""
        return hashlib.sha256(_SID_LABEL + self.sid.encode()).hexdigest()[:32]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def covers(self, model: str) -> bool:
        """A model this admin's grant reaches (a scoped admin sees only its models)."""
        return "*" in self.models or model in self.models

    def covers_tenant(self, tenant: str | None) -> bool:
        return "*" in self.tenants or (tenant is not None and tenant in self.tenants)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Issues and checks session cookies and the CSRF token tied to each session."""

    def __init__(self, server_secret: bytes, *, lifetime_s: int) -> None:
        if lifetime_s <= 0:
            raise ValueError("console session lifetime must be positive")
        self._key = derive_key(server_secret)
        self._lifetime_s = lifetime_s

    @property
    def lifetime_s(self) -> int:
        return self._lifetime_s

    def issue(self, *, admin: str, scopes: frozenset[str], models: frozenset[str],
              tenants: frozenset[str], now: int, credential: str = "",
              not_after: int | None = None) -> tuple[str, ConsoleSession]:
        """A new session of `lifetime_s`, cut short at `not_after` (an OIDC token's own
        expiry) when that comes first."""
        expires = now + self._lifetime_s
        if not_after is not None:
            expires = min(expires, not_after)
        session = ConsoleSession(sid=secrets.token_urlsafe(18), admin=admin, scopes=scopes,
                                 models=models, tenants=tenants, expires=expires,
                                 credential=credential)
        body = json.dumps({"sid": session.sid, "admin": admin, "scopes": sorted(scopes),
                           "models": sorted(models), "tenants": sorted(tenants),
                           "exp": session.expires, "cred": credential},
                          separators=(",", ":")).encode()
        payload = _b64(body)
        return f"{payload}.{self._sign(payload)}", session

    def verify(self, cookie: str | None, *, now: int) -> ConsoleSession:
        """The session a cookie carries; Unauthenticated for a missing, forged or stale one."""
        if not cookie or len(cookie) > _MAX_COOKIE or cookie.count(".") != 1:
            raise Unauthenticated("no console session; log in")
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac.encode(), self._sign(payload).encode()):
            raise Unauthenticated("console session is not valid; log in again")
        try:
            data = json.loads(_unb64(payload))
            session = ConsoleSession(
                sid=str(data["sid"]), admin=str(data["admin"]),
                scopes=frozenset(map(str, data["scopes"])),
                models=frozenset(map(str, data["models"])),
                tenants=frozenset(map(str, data["tenants"])), expires=int(data["exp"]),
                credential=str(data["cred"]))
        except (ValueError, KeyError, TypeError):
            raise Unauthenticated("console session is not valid; log in again") from None
        if session.expires <= now:
            raise Unauthenticated("console session expired; log in again")
        return session

    def fingerprint(self, credential_id: str) -> str:
        """A short keyed fingerprint of what names a configured credential (its stored
        digest): the cookie's payload is readable, so it must not carry the digest itself."""
        return _b64(hmac.new(self._key, _CREDENTIAL_LABEL + credential_id.encode(),
                             hashlib.sha256).digest()[:16])

    def csrf_token(self, session: ConsoleSession) -> str:
        """The synchronizer token every form of this session carries."""
        return _b64(hmac.new(self._key, _CSRF_LABEL + session.sid.encode(),
                             hashlib.sha256).digest())

    def check_csrf(self, session: ConsoleSession, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


def cookie_header(value: str, *, max_age: int, secure: bool) -> str:
    """The Set-Cookie value: HttpOnly, SameSite=Strict, Path=/console, Secure over TLS."""
    parts = [f"{COOKIE_NAME}={value}", "Path=/console", f"Max-Age={max_age}", "HttpOnly",
             "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def clear_cookie_header(*, secure: bool) -> str:
    return cookie_header("", max_age=0, secure=secure)
