"""Who may use the admin API, for what, and how often a caller may fail to log in.

Three kinds of admin credential, any of them configured:

* the full-power token (`admin.token_file` or MODELFENCE_ADMIN_TOKEN), named `admin`;
* named scoped tokens (`admin.tokens`), named `admin:token:<name>`: each holds some scopes
  and some models, and a key it mints, a risk it reads, an alert it lists, cover no more;
  a key it mints names one of its tenants and carries only its groups and attribute
  names (none unless listed), and it sees and revokes only keys of its models and tenants;
* OIDC admins (`admin.oidc`): a JWT of `identity.jwt` whose groups name the admin group,
  named `admin:oidc:<subject>`.

Tokens are compared as SHA-256 digests in constant time, against every configured one
(no early exit). A failed login is named `admin:unknown` (the source address goes in the
audit record beside it) and counted per client address; past `admin.failed_logins` the
address gets 429 with Retry-After before its credential is even looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ..config import ADMIN_SCOPES, AdminCredential, AdminOidc, AdminSettings
from ..errors import Forbidden, RateLimited, Unauthenticated
from ..identity.guard import bearer_token

if TYPE_CHECKING:
    from ..identity.jwt import JwtAuthenticator

log = logging.getLogger("modelfence.admin")
UNKNOWN = "admin:unknown"


_ALL = frozenset({"*"})


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    """An admin and what it may hand out: the full-power admin holds `*` everywhere."""

    name: str
    scopes: frozenset[str]
    models: frozenset[str]
    tenants: frozenset[str] = _ALL
    groups: frozenset[str] = _ALL
    attributes: frozenset[str] = _ALL
    expires_at: datetime | None = None  # an OIDC admin's token expires; admin tokens do not

    def covers(self, model: str | None) -> bool:
        return "*" in self.models or (model is not None and model in self.models)

    def covers_all(self, models: Iterable[str]) -> bool:
        """A key's models are within this admin's: never an empty or `*` grant for a
        scoped admin, since those would reach past its models."""
        if "*" in self.models:
            return True
        wanted = list(models)
        return bool(wanted) and all(m != "*" and m in self.models for m in wanted)

    def covers_key(self, models: Iterable[str], tenant: str) -> bool:
        """A key this admin may see and revoke: within its models and its tenants."""
        return self.covers_all(models) and ("*" in self.tenants or tenant in self.tenants)

    def refusals(self, tenant: str, groups: Iterable[str], attributes: Iterable[str]
                 ) -> list[str]:
        """What a key with this tenant, these groups and attribute names would grant beyond
        this admin's allow-lists, one phrase each (empty: nothing)."""
        out = []
        if "*" not in self.tenants and tenant not in self.tenants:
            out.append(f"tenant {tenant[:64]!r} (its tenants: {_listed(self.tenants)})")
        for what, wanted, allowed in (("groups", groups, self.groups),
                                      ("attributes", attributes, self.attributes)):
            extra = sorted({w for w in wanted if w not in allowed}) if "*" not in allowed else []
            if extra:
                out.append(f"{what} {_listed(extra)} (its {what}: {_listed(allowed)})")
        return out

    def describe_models(self) -> str:
        return ", ".join(sorted(self.models))


def _listed(names: Iterable[str]) -> str:
    shown = sorted(n[:64] for n in names)
    if not shown:
        return "none"
    return ", ".join(shown[:8]) + (f" and {len(shown) - 8} more" if len(shown) > 8 else "")


def _scoped(name: str, grant: AdminCredential | AdminOidc) -> AdminIdentity:
    """The identity of a named token or OIDC admin, with its limits."""
    return AdminIdentity(name, frozenset(grant.scopes), frozenset(grant.models),
                         frozenset(grant.allowed_tenants()), frozenset(grant.groups),
                         frozenset(grant.attributes))


class AdminAuthenticator:
    def __init__(self, settings: AdminSettings, *, static_token: str | None,
                 scoped: list[tuple[Any, str]], jwt: JwtAuthenticator | None) -> None:
        from limits import parse
        from limits.aio.storage import MemoryStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        everything = frozenset(ADMIN_SCOPES)
        self._tokens: list[tuple[str, AdminIdentity]] = []
        if static_token:
            self._tokens.append((_sha256(static_token),
                                 AdminIdentity("admin", everything, frozenset({"*"}))))
        for cred, sha in scoped:
            self._tokens.append((sha, _scoped(f"admin:token:{cred.name}", cred)))
        self._oidc = settings.oidc
        self._jwt = jwt if settings.oidc is not None else None
        self._limit = parse(settings.failed_logins)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    @property
    def enabled(self) -> bool:
        return bool(self._tokens) or self._jwt is not None

    def credential_id(self, token: str, admin: AdminIdentity) -> str:
        """What names the configured credential `token` matched as `admin`, without the
        credential: its stored SHA-256 digest and the grant it carries (for an OIDC admin,
        the OIDC admin grant, whatever the subject). A console session is bound to it, so
        removing, rotating or changing that credential ends the session."""
        if admin.name.startswith("admin:oidc:"):
            return self._oidc_id()
        return _token_id(_sha256(token), admin)

    def credential_ids(self) -> frozenset[str]:
        """`credential_id` of every credential configured now."""
        ids = {_token_id(sha, admin) for sha, admin in self._tokens}
        if self._jwt is not None:
            ids.add(self._oidc_id())
        return frozenset(ids)

    def _oidc_id(self) -> str:
        assert self._oidc is not None
        return "oidc:" + self._oidc.model_dump_json()

    async def authenticate(self, request: Request, scope: str) -> AdminIdentity:
        """The admin behind the request, allowed `scope`; sets request.state.admin_name
        (for the audit record) as soon as it is known, failure or not."""
        request.state.admin_name = UNKNOWN
        if not self.enabled:
            raise Forbidden("the admin API is disabled: configure admin.token_file, "
                            "MODELFENCE_ADMIN_TOKEN, admin.tokens or admin.oidc",
                            reason="admin_disabled")
        source = request.client.host if request.client else "unix"
        if not await self._limiter.test(self._limit, "admin-login", source):
            reset, _ = await self._limiter.get_window_stats(self._limit, "admin-login", source)
            log.debug("admin login from %s refused: too many failures", source)
            raise RateLimited("too many failed admin logins from this address; wait and retry",
                              retry_after_s=int(reset - time.time()) + 1,
                              reason="admin_login_throttled")
        try:
            admin = await self._identify(request)
        except (Unauthenticated, Forbidden) as exc:
            await self._limiter.hit(self._limit, "admin-login", source)
            log.warning("failed admin login from %s as %s: %s", source,
                        request.state.admin_name, exc.reason)
            raise
        request.state.admin_name = admin.name
        if scope not in admin.scopes:
            raise Forbidden(f"{admin.name} lacks the {scope} scope", reason="admin_scope")
        return admin

    async def _identify(self, request: Request) -> AdminIdentity:
        token = bearer_token(request.headers.get("authorization"))
        if self._jwt is not None and self._oidc is not None and token.count(".") == 2:
            principal = await self._jwt.authenticate(token)
            request.state.admin_name = f"admin:oidc:{principal.id}"
            if self._oidc.group not in principal.groups:
                raise Forbidden("this identity is not in the admin group", reason="not_admin")
            return replace(_scoped(request.state.admin_name, self._oidc),
                           expires_at=principal.expires_at)
        presented = _sha256(token)
        found = None
        for sha, admin in self._tokens:  # every one compared: no early exit
            if hmac.compare_digest(presented, sha) and found is None:
                found = admin
        if found is None:
            raise Unauthenticated(reason="bad_admin_token")
        return found


def _token_id(sha: str, admin: AdminIdentity) -> str:
    return "token:" + json.dumps([sha, admin.name, *(sorted(g) for g in (
        admin.scopes, admin.models, admin.tenants, admin.groups, admin.attributes))])


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
