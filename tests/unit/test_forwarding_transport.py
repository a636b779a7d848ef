"""The upstream transport never hands a connection the upstream closed to another request.

Raw HTTP servers on loopback play the upstream: one keeps a connection open after its 500
(the gateway must still not reuse it), one answers 429 with Retry-After. A pooled connection
found closed in the way aiohttp reports a write into a closing transport
(ClientConnectionResetError, not a ClientOSError) is simulated at the one try's seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from modelfence.backends.transport import AiohttpTransport, Answer
from modelfence.errors import UpstreamError, UpstreamTimeout

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CRASH = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 9\r\n\r\nTraceback")
BUSY = (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Type: application/json"
        b"\r\nContent-Length: 2\r\n\r\n{}")

Seen = list[tuple[int, int]]  # (connection, nth request on it)


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Callable[[int, int], bytes]],
                                                 Awaitable[tuple[str, Seen]]]]:
    """A server answering request `nth` on connection `conn` with `answer(conn, nth)`,
    keeping every connection open; returns its URL and the (conn, nth) it saw."""
    servers: list[asyncio.Server] = []

    async def start(answer: Callable[[int, int], bytes]) -> tuple[str, Seen]:
        seen: Seen = []
        count = [0]

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            count[0] += 1
            conn, nth = count[0], 0
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    await reader.readexactly(length)
                    nth += 1
                    seen.append((conn, nth))
                    writer.write(answer(conn, nth))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", seen

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_connection_that_carried_a_5xx_is_never_reused(raw_server: Any) -> None:
    """The upstream keeps it open here, but a crashed handler's server may close it at any
    moment after its answer (uvicorn under MLServer does): it goes, the 200's stays."""
    url, seen = await raw_server(lambda conn, nth: CRASH if conn == 1 else OK)
    transport = AiohttpTransport()
    try:
        assert (await transport.request("POST", url, b"{}", 5.0)).status == 500
        assert (await transport.request("POST", url, b"{}", 5.0)).status == 200
        assert (await transport.request("POST", url, b"{}", 5.0)).status == 200
    finally:
        await transport.close()
    assert seen == [(1, 1), (2, 1), (2, 2)]  # a new connection after the 500, then pooled


async def test_an_upstream_429_comes_with_its_retry_after(raw_server: Any) -> None:
    url, _ = await raw_server(lambda conn, nth: BUSY)
    transport = AiohttpTransport()
    try:
        answer = await transport.request("POST", url, b"{}", 5.0)
    finally:
        await transport.close()
    assert answer == Answer(429, b"{}", "7")


class Tries:
    """Stands in for AiohttpTransport._exchange: raises `first` once (on a pooled
    connection, before any answer), then answers 200; counts which session each try used."""

    def __init__(self, first: BaseException, *, reused: bool = True) -> None:
        self.first: BaseException | None = first
        self.reused = reused
        self.sessions: list[Any] = []

    async def __call__(self, session: Any, method: str, url: str, body: bytes | None,
                       timeout: Any, seen: dict[str, bool]) -> Answer:
        self.sessions.append(session)
        if self.first is not None:
            first, self.first = self.first, None
            seen["reused"] = self.reused
            raise first
        return Answer(200, b"{}")


def reset() -> BaseException:
    return aiohttp.ClientConnectionResetError("Cannot write to closing transport")


@pytest.mark.parametrize("closed", [
    reset, lambda: aiohttp.ServerDisconnectedError(),
    lambda: aiohttp.ClientOSError(32, "Broken pipe"),
])
async def test_a_pooled_connection_closed_under_a_request_is_retried_on_a_new_one(
        monkeypatch: pytest.MonkeyPatch, closed: Callable[[], BaseException]) -> None:
    tries = Tries(closed())
    monkeypatch.setattr(AiohttpTransport, "_exchange", staticmethod(tries))
    transport = AiohttpTransport()
    try:
        assert await transport.request("POST", "http://127.0.0.1:1/", b"{}", 5.0) == \
            Answer(200, b"{}")
        assert len(tries.sessions) == 2
        assert tries.sessions[0] is transport._client()
        assert tries.sessions[1] is transport._client(fresh=True)  # never pooled
    finally:
        await transport.close()


@pytest.mark.parametrize(("first", "reused", "error"), [
    (reset(), False, UpstreamError),  # a new connection: the upstream saw the request
    (aiohttp.ServerTimeoutError("read timed out"), True, UpstreamTimeout),  # still working
])
async def test_a_request_the_upstream_may_have_seen_is_not_sent_twice(
        monkeypatch: pytest.MonkeyPatch, first: BaseException, reused: bool,
        error: type[Exception]) -> None:
    tries = Tries(first, reused=reused)
    monkeypatch.setattr(AiohttpTransport, "_exchange", staticmethod(tries))
    transport = AiohttpTransport()
    try:
        with pytest.raises(error):
            await transport.request("POST", "http://127.0.0.1:1/", b"{}", 5.0)
    finally:
        await transport.close()
    assert len(tries.sessions) == 1


async def test_retry_closed_false_sends_a_request_once(monkeypatch: pytest.MonkeyPatch) -> None:
    tries = Tries(reset())
    monkeypatch.setattr(AiohttpTransport, "_exchange", staticmethod(tries))
    transport = AiohttpTransport(retry_closed=False)
    try:
        with pytest.raises(UpstreamError, match="cannot reach the upstream model server"):
            await transport.request("POST", "http://127.0.0.1:1/", b"{}", 5.0)
    finally:
        await transport.close()
    assert len(tries.sessions) == 1
