"""The one small interface through which modelfence reaches upstream model servers.

The HTTP client is a measured choice (NOTES.md: aiohttp proxied about ten times faster
than httpx here), and tests can swap in another transport. Every failure becomes an
`UpstreamError` (502) or `UpstreamTimeout` (504); nothing from the client library leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from ..errors import UpstreamError, UpstreamTimeout

MAX_UPSTREAM_BODY = 64 * 1024 * 1024
log = logging.getLogger("modelfence.backends.transport")


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
    """Pooled keep-alive connections; the sessions are made inside the running loop.

    A connection the upstream has closed never fails the next caller's request. A crashed
    server may close a connection after its answer without saying so (uvicorn does, under
    MLServer), or close an idle one just as a request leaves on it. A request that fails
    that way on a *reused* connection, before any answer arrived, is sent once more on a new
    connection that is never pooled, as RFC 9112 §9.3.1 allows (aiohttp does so itself for
    idempotent methods only; the gateway's POSTs are inference, without side effects).
    A request that fails on a new connection is not sent again: the upstream saw it.
    """

    def __init__(self, *, max_connections: int = 100, connect_timeout_s: float = 2.0) -> None:
        self._max = max_connections
        self._connect_timeout = connect_timeout_s
        self._session: Any = None
        self._fresh: Any = None  # for the one retry: a new connection, closed after use

    def _client(self, *, fresh: bool = False) -> Any:
        if fresh:
            if self._fresh is None:
                self._fresh = _session(force_close=True, limit=self._max)
            return self._fresh
        if self._session is None:
            self._session = _session(force_close=False, limit=self._max)
        return self._session

    async def request(self, method: str, url: str, body: bytes | None, timeout_s: float
                      ) -> tuple[int, bytes]:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._connect_timeout)
        with upstream_errors(self._connect_timeout, timeout_s):
            seen: dict[str, bool] = {}
            try:
                return await self._exchange(self._client(), method, url, body, timeout, seen)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if not seen.get("reused") or seen.get("answered"):
                    raise
            log.debug("the upstream closed a pooled connection under a request; "
                      "sending it once more on a new connection")
            return await self._exchange(self._client(fresh=True), method, url, body, timeout,
                                        {})

    @staticmethod
    async def _exchange(session: Any, method: str, url: str, body: bytes | None, timeout: Any,
                        seen: dict[str, bool]) -> tuple[int, bytes]:
        """One try; `seen` learns whether the connection was reused and an answer began."""
        # never follow a redirect: the body would go somewhere unconfigured (a 3xx is a 502)
        async with session.request(method, url, data=body, timeout=timeout,
                                   trace_request_ctx=seen, allow_redirects=False) as resp:
            seen["answered"] = True
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
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()
        self._session = self._fresh = None
        await asyncio.sleep(0)


def _session(*, force_close: bool, limit: int) -> Any:
    import aiohttp

    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_mark_reused)
    connector = (aiohttp.TCPConnector(limit=limit, force_close=True) if force_close
                 else aiohttp.TCPConnector(limit=limit, keepalive_timeout=30))
    return aiohttp.ClientSession(connector=connector,
                                 headers={"Content-Type": "application/json"},
                                 skip_auto_headers=("User-Agent",), trace_configs=[trace])


async def _mark_reused(session: Any, ctx: Any, params: Any) -> None:
    """aiohttp's trace hook: this request took a pooled connection, not a fresh one."""
    if isinstance(ctx.trace_request_ctx, dict):
        ctx.trace_request_ctx["reused"] = True
