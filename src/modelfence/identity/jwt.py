"""OIDC/JWT bearer tokens verified against a JWKS, mapped to a `Principal` by config.

Why it is built this way:

* Only asymmetric algorithms from the configured allow-list are accepted; ``none`` and
  HMAC are refused before any key is looked up, and every key is bound to the algorithms
  its type can verify, so a public key can never serve as an HMAC secret (key confusion).
* Each JWK is parsed once into a `PyJWK` per algorithm, cached by ``(kid, alg)``: a
  request costs a header parse, a dict lookup and one signature check, nothing more.
* The JWKS is loaded at start (a JWKS that cannot be loaded refuses to start), refreshed
  in the background every `jwks_max_age_s` (so a removed key stops verifying), and
  refetched when a token names an unknown ``kid`` — at most once per
  `jwks_min_refresh_s`, so a flood of random kids never becomes a flood of fetches.
* When the JWKS cannot be fetched (down, an error status, a redirect, garbage), the last
  good keys keep verifying the tokens they can, for at most `jwks_max_stale_s` after the
  last good fetch. A token naming a key id they lack is refused with 503 (`Unavailable`,
  retryable): while the identity provider is unreachable the gateway cannot know whether
  the key is new or forged, and a 401 would tell the client its token is bad. Past
  `jwks_max_stale_s` every JWT is refused with 503 until the JWKS answers. The outage is
  logged when it starts (each failed fetch, at most once per refresh interval) and when it
  ends, and refused requests are counted (`modelfence_denials{reason="identity_unavailable"}`).
* Every other failure is the same `Unauthenticated` with a reason slug; the token never
  reaches a log line, an error or the audit record (exceptions are raised ``from None``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
import orjson

from ..config import JwtSettings
from ..errors import ConfigurationError, Unauthenticated, Unavailable
from ..kernel.tasks import cancel
from .jwks import JwksError, JwksSource, KeySet, parse_jwks
from .principal import Principal

log = logging.getLogger("modelfence.identity.jwt")

MAX_CLAIM_TEXT = 256


#: The audit/metrics slug of each PyJWT failure, subclasses before their bases.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.ExpiredSignatureError, "expired_token"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    """The audit/metrics slug for a PyJWT failure (`_REASONS`; a missing claim by its name)."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return {"aud": "wrong_audience", "iss": "wrong_issuer"}.get(exc.claim, "missing_claim")
    return "malformed_token"


def _peek_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to choose the key; PyJWT parses and checks it again.

    PyJWT's own `get_unverified_header` decodes every segment (about 25 µs, a third of an
    RS256 check); the header alone takes under 1 µs. A header read differently here than
    by PyJWT can only fail verification: the key is bound to the algorithm named here.
    """
    head = token.partition(".")[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except ValueError:  # bad base64 (binascii.Error) or bad JSON: both are ValueErrors
        raise Unauthenticated(reason="malformed_token") from None
    if not isinstance(header, dict) or not isinstance(header.get("kid", ""), str):
        raise Unauthenticated(reason="malformed_token")
    return header


class JwtAuthenticator:
    """Verify a JWT against the cached JWKS and map its claims to a `Principal`."""

    def __init__(self, settings: JwtSettings, *, source: JwksSource | None = None,
                 on_fetch_error: Callable[[str], None] | None = None) -> None:
        self._s = settings
        self._allowed = frozenset(settings.algorithms)
        self._source = source or JwksSource(settings, on_error=on_fetch_error)
        self._audiences = tuple(settings.audiences)
        # exp is required: a token without one would be valid forever.
        self._decoder = jwt.PyJWT({"require": ["exp", "iss", "aud"]})
        self._keys = KeySet()
        self._lock = asyncio.Lock()
        self._last_refresh = -math.inf  # the first unknown kid after start may refetch at once
        self._fetched_at = -math.inf  # when the keys were last fetched successfully
        self._unreachable = False  # the last fetch failed: the keys may be out of date
        self._task: asyncio.Task[None] | None = None

    @property
    def kids(self) -> frozenset[str]:
        return self._keys.kids

    async def start(self) -> None:
        """Load the JWKS; failing that, refuse to start with one line (no credentials)."""
        await self._source.open()
        try:
            keys = parse_jwks(await self._source.load(), self._allowed)
            if not keys.kids:
                raise JwksError("it holds no signing key for the algorithms "
                                + ", ".join(sorted(self._allowed)))
        except JwksError as exc:
            await self._source.close()
            raise ConfigurationError(
                f"identity.jwt: cannot use the JWKS from {self._source.where}: {exc}") from None
        self._keys, self._fetched_at = keys, time.monotonic()
        log.info("JWKS from %s: %d key(s)", self._source.where, len(keys.kids))
        if self._s.jwks_max_age_s > 0:
            self._task = asyncio.create_task(self._refresh_periodically(), name="jwks-refresh")

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
        await self._source.close()

    async def authenticate(self, token: str) -> Principal:
        """The principal a valid token names; a bad token is a 401, an identity provider
        that cannot be reached (see the module's notes) a 503."""
        header = _peek_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise Unauthenticated(reason="alg_not_allowed")
        if self._too_stale():
            await self._refresh_when_stale()
            if self._too_stale():
                raise self._unavailable()
        kid = self._keys.resolve(header.get("kid"))
        if kid is None:  # no kid, and more than one key it could mean
            raise Unauthenticated(reason="unknown_kid")
        if kid not in self._keys.kids:
            await self._refresh_for_unknown(kid)
            if kid not in self._keys.kids:
                if self._unreachable:  # a new key, or a forged one: no way to tell now
                    raise self._unavailable()
                raise Unauthenticated(reason="unknown_kid")
        key = self._keys.keys.get((kid, alg))
        if key is None:  # the key exists but is not one that verifies this algorithm
            raise Unauthenticated(reason="alg_not_allowed")
        try:
            claims = self._decoder.decode(
                token, key, algorithms=[alg], audience=self._audiences,
                issuer=self._s.issuer, leeway=self._s.leeway_s)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(reason=_reason(exc)) from None
        return principal_from_claims(claims, kid, self._s)

    def _too_stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self._s.jwks_max_stale_s

    def _unavailable(self) -> Unavailable:
        wait = self._s.jwks_min_refresh_s - (time.monotonic() - self._last_refresh)
        return Unavailable("the identity provider cannot be reached; retry later",
                           retry_after_s=math.ceil(max(1.0, wait)),
                           reason="identity_unavailable")

    async def _refresh_when_stale(self) -> None:
        async with self._lock:
            if not self._too_stale():
                return
            if time.monotonic() - self._last_refresh < self._s.jwks_min_refresh_s:
                return
            await self._refresh(f"the keys are older than {self._s.jwks_max_stale_s:g} s")

    async def _refresh_for_unknown(self, kid: str) -> None:
        async with self._lock:  # concurrent unknown kids wait for one fetch, not one each
            if kid in self._keys.kids:
                return
            if time.monotonic() - self._last_refresh < self._s.jwks_min_refresh_s:
                return
            await self._refresh("a token names an unknown kid")

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._s.jwks_max_age_s)
            async with self._lock:
                await self._refresh("periodic")

    async def _refresh(self, why: str) -> None:
        self._last_refresh = time.monotonic()
        try:
            keys = parse_jwks(await self._source.load(), self._allowed)
            if not keys.kids:
                raise JwksError("it holds no usable signing key")
        except JwksError as exc:
            self._unreachable = True
            log.warning("JWKS refresh (%s) from %s failed: %s; the last good %d key(s) verify "
                        "for up to %g s after the last good fetch, tokens naming other key "
                        "ids get 503", why, self._source.where, exc, len(self._keys.kids),
                        self._s.jwks_max_stale_s)
            return
        except Exception:  # a surprise must not kill the refresher or drop the good keys
            self._unreachable = True
            log.exception("JWKS refresh (%s) from %s failed, keeping the last good %d key(s)",
                          why, self._source.where, len(self._keys.kids))
            return
        if self._unreachable:
            log.warning("JWKS from %s answers again", self._source.where)
        added, removed = keys.kids - self._keys.kids, self._keys.kids - keys.kids
        self._keys, self._fetched_at, self._unreachable = keys, time.monotonic(), False
        log.info("JWKS refreshed (%s) from %s: %d key(s), %d new, %d removed",
                 why, self._source.where, len(keys.kids), len(added), len(removed))


# -- claims → principal ----------------------------------------------------------------------


class _ClaimError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def principal_from_claims(claims: Mapping[str, Any], kid: str, s: JwtSettings) -> Principal:
    """Map verified claims to a principal as configured; a missing identity claim is a 401."""
    try:
        pid = _text(claims, s.principal_claim)
        tenant = s.tenant if s.tenant is not None else _text(claims, s.tenant_claim or "")
        groups = _names(claims, s.groups_claim, "")
        models = _names(claims, s.models_claim, s.models_prefix)
        expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
    except _ClaimError as exc:
        raise Unauthenticated(reason=exc.reason) from None
    except (OverflowError, ValueError, OSError):
        raise Unauthenticated(reason="invalid_claim") from None
    attributes = {attr: claims[name] for attr, name in s.attributes.items() if name in claims}
    return Principal(id=pid, tenant=tenant, groups=groups, models=models,
                     key_id=f"jwt:{kid}", expires_at=expires_at, attributes=attributes)


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None or value == "":
        raise _ClaimError("missing_claim")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _ClaimError("invalid_claim")
    text = str(value)
    if len(text) > MAX_CLAIM_TEXT or _has_control(text):
        raise _ClaimError("invalid_claim")
    return text


def _has_control(text: str) -> bool:
    """NUL or another control character, or a lone surrogate: PostgreSQL refuses NUL in text
    and text that is not UTF-8 (every store call of the caller would fail), and a line break
    in an id forges log lines; no real id has one."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in text)


def _names(claims: Mapping[str, Any], name: str | None, prefix: str) -> tuple[str, ...]:
    """A list claim, or a space-separated one (``scope``); absent means none."""
    value = claims.get(name) if name else None
    if value is None:
        return ()
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and not _has_control(i)
                                              for i in items):
        raise _ClaimError("invalid_claim")
    return tuple(i.removeprefix(prefix) for i in items if i.startswith(prefix) and i != prefix)
