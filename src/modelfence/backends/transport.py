"""The one small interface through which modelfence reaches upstream model servers.

The HTTP client is a measured choice (NOTES.md: aiohttp proxied about ten times faster
than httpx here), and tests can swap in another transport. Every failure becomes an
`UpstreamError` (502) or `UpstreamTimeout` (504); nothing from the client library leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from ..errors import UpstreamError, UpstreamTimeout

MAX_UPSTREAM_BODY = 64 * 1024 * 1024


@contextlib.contextmanager
def upstream_errors(connect_timeout_s: float, timeout_s: float) -> Iterator[None]:
    """aiohttp's failures as modelfence's: 504 for a timeout, 502 for anything else."""
    import aiohttp

    try:
        yield
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamTimeout("the upstream model server did not accept a connection within "
                              f"{connect_timeout_s:g} s") from None
    except TimeoutError:
        raise UpstreamTimeout(
            f"the upstream model server did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError:
        raise UpstreamError("cannot reach the upstream model server") from None


class Transport(ABC):
    @abstractmethod
    async def request(self, method: str, url: str, body: bytes | None, timeout_s: float
                      ) -> tuple[int, bytes]:
        """(status, body) of one HTTP exchange."""

    async def close(self) -> None:
        return None


class AiohttpTransport(Transport):
    """Pooled keep-alive connections; the session is made inside the running loop."""

    def __init__(self, *, max_connections: int = 100, connect_timeout_s: float = 2.0) -> None:
        self._max = max_connections
        self._connect_timeout = connect_timeout_s
        self._session: Any = None

    def _client(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max, keepalive_timeout=30),
                headers={"Content-Type": "application/json"},
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def request(self, method: str, url: str, body: bytes | None, timeout_s: float
                      ) -> tuple[int, bytes]:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._connect_timeout)
        with upstream_errors(self._connect_timeout, timeout_s):
            async with self._client().request(method, url, data=body, timeout=timeout) as resp:
                length = resp.content_length
                if length is not None and length > MAX_UPSTREAM_BODY:
                    raise UpstreamError("the upstream model server answered with an oversized body")
                data = bytearray()
                async for chunk in resp.content.iter_any():  # read(n) stops at the first chunk
                    data += chunk
                    if len(data) > MAX_UPSTREAM_BODY:
                        raise UpstreamError(
                            "the upstream model server answered with an oversized body")
                return resp.status, bytes(data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)
