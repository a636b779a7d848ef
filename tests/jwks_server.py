"""A test identity provider: locally generated keys, signed tokens, a JWKS on loopback.

`Issuer` mints RSA (RS256), EC P-256 (ES256) and Ed25519 (EdDSA) keys and signs tokens
with them, and can forge the tokens an attacker would try (``alg: none``, HS256 with the
public key as the secret). `JwksServer` serves the issuer's current public keys on a
free loopback port from its own thread and counts the fetches, so a test can prove the
gateway does not fetch the JWKS per request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.test.local/"
AUDIENCE = "modelfence"
ALGORITHMS = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        algo = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        jwk: dict[str, Any] = algo.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def new_key(kind: str, kid: str) -> SigningKey:
    if kind == "rsa":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(kid, ALGORITHMS[kind], private)


@dataclass
class Issuer:
    """Keys published in the JWKS (`published`) and keys it can sign with (`keys`)."""

    keys: dict[str, SigningKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)

    def add(self, kind: str, kid: str, *, publish: bool = True) -> SigningKey:
        key = new_key(kind, kid)
        self.keys[kid] = key
        if publish:
            self.published.append(kid)
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.keys[k].public_jwk() for k in list(self.published)]}

    def claims(self, **override: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tid": "acme",
                                "iat": now, "exp": now + 300, "groups": ["analysts"],
                                "models": ["digits"]}
        base.update(override)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, kid: str, *, signer: str | None = None, headers: dict[str, Any] | None = None,
              **claims: Any) -> str:
        """A token whose header names `kid`, signed by key `signer` (default: the same)."""
        key = self.keys[signer or kid]
        return jwt.encode(self.claims(**claims), key.private, algorithm=key.alg,
                          headers={"kid": kid, **(headers or {})})

    def forge(self, kid: str, alg: str, secret: bytes = b"", **claims: Any) -> str:
        """A token PyJWT would refuse to make: ``alg: none`` or HMAC keyed by `secret`."""
        header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        payload = b64(json.dumps(self.claims(**claims)).encode())
        signing_input = f"{header}.{payload}".encode()
        if alg == "none":
            return f"{header}.{payload}."
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{b64(mac)}"


class JwksServer:
    """Serves ``GET /jwks.json`` from `issuer` on loopback; `fetches` counts the GETs."""

    def __init__(self, issuer: Issuer, *, port: int = 0) -> None:
        """`port`: a stopped server's, to bring the identity provider back where it was."""
        self.issuer = issuer
        self.fetches = 0
        self.failing = False
        self.redirect_to: str | None = None  # answer 302 to this URL instead of the keys
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = int(self._sock.getsockname()[1])
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def start(self) -> JwksServer:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()),
                                        name="jwks-server", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise TimeoutError("JWKS server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> JwksServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.SockSite(runner, self._sock).start()
            self._started.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.failing:
            return web.Response(status=503, text="down for maintenance")
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        return web.json_response(self.issuer.jwks())
