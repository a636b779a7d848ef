"""The one small interface through which modelfence reaches upstream model servers.

The HTTP client is a measured choice (aiohttp proxied about ten times faster
than httpx here), and tests can swap in another transport. Every failure becomes an
`UpstreamError` (502) or `UpstreamTimeout` (504); nothing from the client library leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

from ..errors import UpstreamError, UpstreamTimeout

MAX_UPSTREAM_BODY = 64 * 1024 * 1024
log = logging.getLogger("modelfence.backends.transport")
#: The try in flight in this task: the connector marks it "reused" when it hands out a pooled
#: connection (`_connector_class`), without aiohttp's tracing, which costs about 25 µs a request.
_TRY: ContextVar[dict[str, bool] | None] = ContextVar("modelfence_upstream_try", default=None)


def connect_timed_out(connect_timeout_s: float) -> UpstreamTimeout:
    return UpstreamTimeout("the upstream model server did not accept a connection within "
                           f"{connect_timeout_s:g} s")


def answer_timed_out(timeout_s: float) -> UpstreamTimeout:
    return UpstreamTimeout(f"the upstream model server did not answer within {timeout_s:g} s")


def unreachable() -> UpstreamError:
    return UpstreamError("cannot reach the upstream model server")


def oversized() -> UpstreamError:
    return UpstreamError("the upstream model server answered with an oversized body")


@contextlib.contextmanager
def upstream_errors(connect_timeout_s: float, timeout_s: float) -> Iterator[None]:
    """aiohttp's failures as modelfence's: 504 for a timeout, 502 for anything else (the
    same errors every HTTP client of an upstream raises: the functions above)."""
    import aiohttp

    try:
        yield
    except aiohttp.ConnectionTimeoutError:
        raise connect_timed_out(connect_timeout_s) from None
    except TimeoutError:
        raise answer_timed_out(timeout_s) from None
    except aiohttp.ClientError:
        raise unreachable() from None


class Answer(NamedTuple):
    """What an upstream answered: its status, its body and its Retry-After, if any."""

    status: int
    body: bytes
    retry_after: str | None = None


class Transport(ABC):
    @abstractmethod
    async def request(self, method: str, url: str, body: bytes | None, timeout_s: float
                      ) -> Answer:
        """The answer to one HTTP exchange."""

    async def close(self) -> None:
        return None


class AiohttpTransport(Transport):
    """Pooled keep-alive connections; the sessions are made inside the running loop.

    A connection the upstream has closed never fails another caller's request:

    - a connection that carried a 5xx answer is closed, not pooled (`_response_class`): a
      server whose handler crashed may close it after its answer without saying so
      (uvicorn does, under MLServer), and the next request written into it would fail;
    - a request that fails on a *reused* connection before any answer arrived (the
      upstream closed an idle one just as the request left on it, or a pooled one died
      some other way) is sent once more on a new connection that is never pooled, as
      RFC 9112 §9.3.1 allows (aiohttp does so itself for idempotent methods only; the
      gateway's POSTs are inference, without side effects). `retry_closed` turns this off.

    A request that fails on a new connection, or after its answer began, or by a timeout,
    is not sent again: the upstream saw it.
    """

    def __init__(self, *, max_connections: int = 100, connect_timeout_s: float = 2.0,
                 retry_closed: bool = True, traces: Sequence[Any] = ()) -> None:
        self._max = max_connections
        self._traces = list(traces)  # aiohttp trace configs (tracing: the upstream spans)
        self._connect_timeout = connect_timeout_s
        self._retry_closed = retry_closed
        self._session: Any = None
        self._fresh: Any = None  # for the one retry: a new connection, closed after use
        self._timeouts: dict[float, Any] = {}  # aiohttp.ClientTimeout by total seconds

    def _client(self, *, fresh: bool = False) -> Any:
        if fresh:
            if self._fresh is None:
                self._fresh = _session(force_close=True, limit=self._max,
                                       traces=self._traces)
            return self._fresh
        if self._session is None:
            self._session = _session(force_close=False, limit=self._max,
                                     traces=self._traces)
        return self._session

    async def request(self, method: str, url: str, body: bytes | None, timeout_s: float
                      ) -> Answer:
        import aiohttp

        timeout = self._timeouts.get(timeout_s)
        if timeout is None:  # one per configured timeout: made once, not per request
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=self._connect_timeout)
        with upstream_errors(self._connect_timeout, timeout_s):
            seen: dict[str, bool] = {}
            try:
                return await self._exchange(self._client(), method, url, body, timeout, seen)
            except aiohttp.ClientConnectionError as exc:
                if not (self._retry_closed and _closed_under(exc, seen)):
                    raise
            log.debug("the upstream closed a pooled connection under a request; "
                      "sending it once more on a new connection")
            return await self._exchange(self._client(fresh=True), method, url, body, timeout,
                                        {})

    @staticmethod
    async def _exchange(session: Any, method: str, url: str, body: bytes | None, timeout: Any,
                        seen: dict[str, bool]) -> Answer:
        """One try; `seen` learns whether the connection was reused and an answer began."""
        mark = _TRY.set(seen)
        try:
            # never follow a redirect: the body would go somewhere unconfigured (a 3xx: 502)
            async with session.request(method, url, data=body, timeout=timeout,
                                       allow_redirects=False) as resp:
                seen["answered"] = True
                return await _read(resp)
        finally:
            _TRY.reset(mark)

    async def close(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()
        self._session = self._fresh = None
        await asyncio.sleep(0)


async def _read(resp: Any) -> Answer:
    """The answer's status, body (at most MAX_UPSTREAM_BODY bytes) and Retry-After."""
    length = resp.content_length
    if length is not None and length > MAX_UPSTREAM_BODY:
        resp.close()
        raise oversized()
    data = bytearray()
    async for chunk in resp.content.iter_any():  # read(n) stops at the first chunk
        data += chunk
        if len(data) > MAX_UPSTREAM_BODY:
            resp.close()
            raise oversized()
    return Answer(resp.status, bytes(data), resp.headers.get("Retry-After"))


def _closed_under(exc: BaseException, seen: dict[str, bool]) -> bool:
    """Whether `exc` is a pooled connection found closed before any answer: not a timeout
    (the upstream may be working on the request), not on a new connection."""
    return not isinstance(exc, TimeoutError) and bool(seen.get("reused")) \
        and not seen.get("answered")


def _session(*, force_close: bool, limit: int, traces: list[Any]) -> Any:
    import aiohttp

    connector_class, reuse_traces = _connector_class()
    connector = (connector_class(limit=limit, force_close=True) if force_close
                 else connector_class(limit=limit, keepalive_timeout=30))
    return aiohttp.ClientSession(connector=connector,
                                 headers={"Content-Type": "application/json"},
                                 skip_auto_headers=("User-Agent",),
                                 trace_configs=[*(reuse_traces or ()), *traces] or None,
                                 response_class=_response_class())


def _connector_class() -> tuple[Any, list[Any] | None]:
    """aiohttp's connector, marking the try in flight (`_TRY`) "reused" when it hands out a
    pooled connection; and the trace configs still needed for that (none, unless this
    aiohttp's connector cannot be hooked: then its tracing does it, at a cost)."""
    import aiohttp

    base = aiohttp.TCPConnector
    if not inspect.iscoroutinefunction(getattr(base, "_get", None)):  # aiohttp before 3.11
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_mark_reused)
        return base, [trace]

    class ReuseMarking(base):  # type: ignore[misc, valid-type]
        async def _get(self, *args: Any, **kwargs: Any) -> Any:
            conn = await super()._get(*args, **kwargs)
            seen = _TRY.get()
            if conn is not None and seen is not None:
                seen["reused"] = True
            return conn

    return ReuseMarking, None


def _response_class() -> Any:
    """aiohttp's response, closing the connection of a 5xx answer instead of pooling it.

    A server whose handler crashed may close that connection just after its answer (uvicorn
    does, under MLServer), and the next request written into it would fail. aiohttp hands
    a connection back to the pool as soon as the body has arrived, which for a short body is
    before `start` returns: closed here, it is dropped by the pool; still in use, it is
    closed when released.
    """
    import aiohttp

    class DropAfterServerError(aiohttp.ClientResponse):
        async def start(self, connection: Any) -> DropAfterServerError:
            protocol = connection.protocol
            await super().start(connection)
            if self.status >= 500 and protocol is not None:
                if self.connection is None:
                    protocol.close()  # already back in the pool, idle
                else:
                    protocol.force_close()
            return self

    return DropAfterServerError


async def _mark_reused(session: Any, ctx: Any, params: Any) -> None:
    """aiohttp's trace hook (older aiohttp): this request took a pooled connection."""
    seen = _TRY.get()
    if seen is not None:
        seen["reused"] = True
