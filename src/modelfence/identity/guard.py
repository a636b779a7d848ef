"""The identity guard: no principal, no further work (the body is not even read).

The guard only reads the bearer token; which credential kinds are accepted (API keys,
JWTs) is the `Authenticator`'s business, chosen at start from the configuration.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import Unauthenticated
from ..kernel.call import Call
from ..kernel.chain import Guard
from . import Authenticator


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or a uniform 401."""
    if not authorization:
        raise Unauthenticated(reason="missing_credentials")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    # 8 KiB: an IdP's JWT with many groups can outgrow 4 KiB; anything longer is refused
    if scheme.lower() != "bearer" or not token or len(token) > 8192:
        raise Unauthenticated(reason="malformed_credentials")
    return token


class IdentityGuard(Guard[Call]):
    name: ClassVar[str] = "identity"
    provides: ClassVar[frozenset[str]] = frozenset({"principal"})

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def on_request(self, call: Call) -> None:
        token = bearer_token(call.request.headers.get("authorization"))
        call.principal = await self._auth.authenticate(token)
        call.note(self.name, "allow", f"key {call.principal.key_id}")
