"""Who is calling: API keys and OIDC/JWT bearer tokens behind one `Authenticator`.

Both arrive as ``Authorization: Bearer <token>``. The dispatch is by shape, not by
trial: an API key (``mf_<16 hex>_<43 chars>``) has no dot and a JWT has exactly two,
so a token goes to exactly one verifier and its failure reason is that verifier's.
The JWT module (and with it PyJWT and cryptography) is imported only when configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..errors import Unauthenticated
from .principal import Principal

if TYPE_CHECKING:
    from ..config import IdentitySettings
    from .apikeys import ApiKeys
    from .jwt import JwtAuthenticator

__all__ = ["Authenticator", "BearerAuthenticator", "Principal", "build_authenticator"]


class Authenticator(Protocol):
    """Turns a bearer token into a principal, or raises `Unauthenticated` with a reason."""

    async def authenticate(self, token: str) -> Principal: ...


class BearerAuthenticator:
    """The gateway's authenticator: routes each token to API keys or JWT by its shape.

    It owns the lifecycle of what needs one (the JWKS is loaded in `start`, so a
    gateway whose JWKS cannot be read refuses to start).
    """

    def __init__(self, *, api_keys: ApiKeys | None, jwt: JwtAuthenticator | None) -> None:
        self._keys = api_keys
        self._jwt = jwt

    @property
    def jwt(self) -> JwtAuthenticator | None:
        """The JWT verifier, shared with the admin API's OIDC admins."""
        return self._jwt

    async def start(self) -> None:
        if self._jwt is not None:
            await self._jwt.start()

    async def close(self) -> None:
        if self._jwt is not None:
            await self._jwt.close()

    async def authenticate(self, token: str) -> Principal:
        if self._jwt is not None and token.count(".") == 2:
            return await self._jwt.authenticate(token)
        if self._keys is not None:
            return await self._keys.authenticate(token)
        raise Unauthenticated(reason="malformed_token")


def build_authenticator(settings: IdentitySettings, api_keys: ApiKeys, *,
                        on_jwks_error: Callable[[str], None] | None = None
                        ) -> BearerAuthenticator:
    """The authenticator the identity settings ask for (made here, opened by `start`);
    `on_jwks_error` counts failed JWKS fetches by kind."""
    jwt = None
    if settings.jwt is not None:
        from .jwt import JwtAuthenticator

        jwt = JwtAuthenticator(settings.jwt, on_fetch_error=on_jwks_error)
    return BearerAuthenticator(api_keys=api_keys if settings.api_keys else None, jwt=jwt)
