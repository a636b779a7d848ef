"""API keys: minted once, stored only as an HMAC digest, checked in constant time.

A key looks like ``mf_<key id>_<secret>``. The key id is public (it names the key in
lists, revocations and the audit log); the whole key is hashed with HMAC-SHA256 under
the server secret, so a copy of the key store alone cannot be used to call the API.
Lookups are cached for `cache_ttl_s` (default 0.5 s) so the hot path rarely touches the
store; a revocation through this process drops the cache entry at once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import BadRequest, Unauthenticated
from ..stores.keys import KeyRecord, KeyStore
from .principal import Principal

_KEY_RE = re.compile(r"^mf_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:\-]{0,127}$")


def digest(secret: bytes, text: str) -> str:
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly minted key: `token` is shown once and never stored."""

    token: str
    record: KeyRecord


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise BadRequest(f"{what}: must be 1-128 letters, digits or _.@:- (got {value[:40]!r})")
    return value


class ApiKeys:
    """Create, list, revoke and authenticate API keys over a `KeyStore`."""

    def __init__(self, store: KeyStore, secret: bytes, *, cache_ttl_s: float = 1.0) -> None:
        self._store = store
        self._secret = secret
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    @property
    def store(self) -> KeyStore:
        return self._store

    async def create(
        self,
        *,
        principal: str,
        tenant: str,
        groups: list[str] | tuple[str, ...] = (),
        models: list[str] | tuple[str, ...] = (),
        expires_at: datetime | None = None,
        description: str = "",
        attributes: dict[str, Any] | None = None,
    ) -> NewKey:
        """Mint a key. `attributes` carry grants for policy: clearance, purpose, networks."""
        _check_name(principal, "principal")
        _check_name(tenant, "tenant")
        for g in groups:
            _check_name(g, "groups")
        for m in models:
            if m != "*":
                _check_name(m, "models")
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise BadRequest("expires_at: must be in the future")
        key_id = secrets.token_hex(8)
        token = f"mf_{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(
            key_id=key_id, digest=digest(self._secret, token), principal=principal,
            tenant=tenant, groups=tuple(groups), models=tuple(models),
            created_at=datetime.now(UTC), expires_at=expires_at, revoked_at=None,
            description=description[:200], attributes=check_attributes(attributes or {}),
        )
        await self._store.put(record)
        return NewKey(token, record)

    async def records(self) -> list[KeyRecord]:
        return await self._store.records()

    async def revoke(self, key_id: str) -> bool:
        done = await self._store.revoke(key_id, datetime.now(UTC))
        self._cache.pop(key_id, None)
        return done

    async def authenticate(self, token: str) -> Principal:
        """The principal behind a bearer token; every failure is the same 401."""
        match = _KEY_RE.match(token)
        if match is None:
            raise Unauthenticated(reason="malformed_key")
        key_id = match.group(1)
        record = await self._lookup(key_id)
        computed = digest(self._secret, token)
        stored = record.digest if record is not None else "0" * 64
        if not hmac.compare_digest(computed, stored) or record is None:
            raise Unauthenticated(reason="unknown_key")
        if record.revoked_at is not None:
            raise Unauthenticated(reason="revoked_key")
        if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            raise Unauthenticated(reason="expired_key")
        return Principal(
            id=record.principal, tenant=record.tenant, groups=record.groups,
            models=record.models, key_id=record.key_id, expires_at=record.expires_at,
            attributes=dict(record.attributes),
        )

    async def _lookup(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        record = await self._store.get(key_id)
        if len(self._cache) > 100_000:
            self._cache.clear()  # bounded: unknown ids cannot grow memory without limit
        self._cache[key_id] = (now, record)
        return record


_ATTR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_RESERVED = {"name", "tenant", "groups", "models", "kind"}


def check_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Grant attributes a policy can rely on: well-formed names, scalar values, real CIDRs."""
    out: dict[str, Any] = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not _ATTR_NAME.match(name) or name in _RESERVED:
            raise BadRequest(f"attributes: {str(name)[:40]!r} is not an allowed attribute name")
        if name == "clearance":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000:
                raise BadRequest("attributes.clearance: must be an integer from 0 to 1000")
        elif name == "networks":
            if not isinstance(value, list) or not value:
                raise BadRequest("attributes.networks: must be a non-empty list of CIDRs")
            for net in value:
                try:
                    ipaddress.ip_network(str(net), strict=False)
                except ValueError:
                    raise BadRequest(
                        f"attributes.networks: {str(net)[:50]!r} is not a CIDR network") from None
            value = [str(ipaddress.ip_network(str(n), strict=False)) for n in value]
        elif not (isinstance(value, str | int | bool) and len(str(value)) <= 200):
            raise BadRequest(f"attributes.{name}: must be a string, integer or boolean")
        out[name] = value
    return out


def public_view(record: KeyRecord) -> dict[str, object]:
    """What lists and the admin API show: never the digest."""
    def iso(d: datetime | None) -> str | None:
        return d.isoformat() if d else None

    r = record
    now = datetime.now(UTC)
    status = ("revoked" if r.revoked_at else
              "expired" if r.expires_at is not None and r.expires_at <= now else "active")
    return {
        "key_id": r.key_id, "principal": r.principal, "tenant": r.tenant,
        "groups": list(r.groups), "models": list(r.models), "created_at": iso(r.created_at),
        "expires_at": iso(r.expires_at), "revoked_at": iso(r.revoked_at),
        "description": r.description, "attributes": r.attributes, "status": status,
    }


_DURATION_RE = re.compile(r"^(\d{1,6})([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def expiry_from(expires_in: str | None, expires_at: datetime | None) -> datetime | None:
    """An absolute expiry from `30d`-style durations or an ISO time (with time zone)."""
    if expires_in and expires_at:
        raise BadRequest("expires_in, expires_at: give one or the other")
    if expires_in:
        m = _DURATION_RE.match(expires_in.strip())
        if m is None:
            raise BadRequest(
                f"expires_in: {expires_in[:20]!r} is not a duration like 90m, 12h, 30d")
        return datetime.now(UTC) + timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
    if expires_at is not None and expires_at.tzinfo is None:
        raise BadRequest("expires_at: give a time zone, e.g. 2027-01-01T00:00:00Z")
    return expires_at
