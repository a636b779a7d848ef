"""JSON Web Key Sets: where they come from, and which of their keys may verify what.

A JWKS is read from a file or fetched over HTTP (aiohttp, one session made in the
running loop, as the upstream transport does). Parsing binds each key to the
algorithms its type can verify (RSA → RS*/PS*, P-256 → ES256, Ed25519 → EdDSA, ...)
and that the configuration allows; symmetric (``oct``) keys, encryption keys and RSA
keys under 2048 bits are skipped, so no token can pick a weaker way to be checked.
Messages name the file, or the URL without credentials, query or fragment. Redirects are
not followed: a 3xx is a failed fetch, so the https-only rule holds for where the keys
really come from, not only for the configured URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt import PyJWK

from ..config import JwtSettings
from ..redaction import redact_url

log = logging.getLogger("modelfence.identity.jwt")

MAX_JWKS_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
#: What a key of each type (and curve) can verify; HMAC ("oct") is absent on purpose.
_FAMILIES: dict[tuple[Any, Any], frozenset[str]] = {
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}


class JwksError(Exception):
    """A JWKS could not be read or used; the message is safe to log. `kind` is a metric
    label: redirect, status, unreachable, timeout, too_large or invalid."""

    def __init__(self, message: str, *, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class KeySet:
    """Verification keys by ``(kid, alg)``; replaced whole on refresh, never mutated."""

    keys: dict[tuple[str, str], PyJWK] = field(default_factory=dict)
    kids: frozenset[str] = frozenset()

    def resolve(self, kid: Any) -> str | None:
        """The kid a token means: its own, or the only key when it names none."""
        if kid is None and len(self.kids) == 1:
            return next(iter(self.kids))
        return kid if isinstance(kid, str) else None


def parse_jwks(doc: Any, allowed: frozenset[str]) -> KeySet:
    """Keep the signing keys that can verify an allowed algorithm; skip (and log) the rest."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError("not a JWKS (expected a JSON object with a 'keys' list)")
    keys: dict[tuple[str, str], PyJWK] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid, kty = jwk.get("kid", ""), jwk.get("kty")
        if not isinstance(kid, str):
            continue
        family = _RSA if kty == "RSA" else _FAMILIES.get((kty, jwk.get("crv")), frozenset())
        declared = jwk.get("alg")
        algs = family & allowed & ({declared} if isinstance(declared, str) else family)
        if not algs:
            log.warning("JWKS key %r (kty %r) cannot verify any allowed algorithm; skipped",
                        kid[:64], str(kty)[:16])
            continue
        for alg in sorted(algs):
            try:
                key = PyJWK(jwk, alg)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                # PyJWT's message would quote the whole JWK; the kid is enough
                log.warning("JWKS key %r (kty %r) cannot be read; skipped", kid[:64], kty)
                break
            if kty == "RSA" and getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
                log.warning("JWKS key %r is an RSA key under %d bits; skipped", kid[:64],
                            MIN_RSA_BITS)
                break
            keys[(kid, alg)] = key
    return KeySet(keys, frozenset(k for k, _ in keys))


class JwksSource:
    """Reads the configured JWKS: a file (read again on each refresh) or a URL."""

    def __init__(self, settings: JwtSettings, *,
                 on_error: Callable[[str], None] | None = None) -> None:
        self._url = settings.jwks_url
        self._file = settings.jwks_file
        self._timeout_s = settings.jwks_timeout_s
        self._on_error = on_error  # counts each failed fetch by its kind
        self._session: Any = None
        self.where = redact_url(self._url) if self._url else str(self._file)

    async def open(self) -> None:
        if self._url and self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/json"}, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)

    async def load(self) -> Any:
        """The decoded JSON document; every failure is a `JwksError` with a short reason."""
        try:
            raw = await self._fetch() if self._url else self._read()
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise JwksError(f"not JSON ({str(exc)[:80]})") from None
        except JwksError as exc:
            if self._on_error is not None:
                self._on_error(exc.kind)
            raise

    def _read(self) -> bytes:
        assert self._file is not None
        try:
            with self._file.open("rb") as f:
                raw = f.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise JwksError(f"cannot read file: {exc.strerror}", kind="unreachable") from None
        if len(raw) > MAX_JWKS_BYTES:
            raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes", kind="too_large")
        return raw

    async def _fetch(self) -> bytes:
        import aiohttp

        if self._session is None:
            raise JwksError("not opened")
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        try:
            async with self._session.get(self._url, timeout=timeout,
                                         allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    raise JwksError(f"HTTP {resp.status}: a redirect, not followed (serve the "
                                    "JWKS from the configured URL)", kind="redirect")
                if resp.status != 200:
                    raise JwksError(f"HTTP {resp.status}", kind="status")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():  # read(n) may stop at one chunk
                    size += len(chunk)
                    if size > MAX_JWKS_BYTES:
                        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes", kind="too_large")
                    chunks.append(chunk)
        except TimeoutError:
            raise JwksError(f"no answer within {self._timeout_s:g} s", kind="timeout") from None
        except aiohttp.ClientError as exc:
            raise JwksError(f"cannot connect ({type(exc).__name__})",
                            kind="unreachable") from None
        return b"".join(chunks)
