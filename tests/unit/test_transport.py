"""The upstream transport against raw HTTP servers on loopback that close connections badly.

A connection the upstream closed must never fail the next caller: these servers close one
after a 500 without saying so (as uvicorn does when MLServer's handler crashes), or close a
kept-alive connection as the next request arrives on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from modelfence.backends.transport import AiohttpTransport
from modelfence.errors import UpstreamError

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CRASH = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 9\r\n\r\nTraceback")

Handler = Callable[["RawServer", int, int], Awaitable[bytes | None]]


@dataclass
class RawServer:
    """Answers each request with what `handler(server, connection, nth on it)` returns;
    None closes the connection without an answer."""

    handler: Handler
    connections: int = 0
    requests: list[tuple[int, int]] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, nth = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                nth += 1
                self.requests.append((conn, nth))
                answer = await self.handler(self, conn, nth)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> RawServer:
        raw = RawServer(handler)
        server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
        raw.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return raw

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_connection_closed_after_a_500_does_not_fail_the_next_request(
        serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def crash_then_hang_up(server: RawServer, conn: int, nth: int) -> bytes | None:
        if nth > 1:
            return None  # the crashed handler's connection: closed under the next request
        return CRASH if conn == 1 else OK

    server = await serve(crash_then_hang_up)
    transport = AiohttpTransport()
    url = f"http://127.0.0.1:{server.port}/v2/models/m/infer"
    try:
        assert (await transport.request("POST", url, b"{}", 5.0))[0] == 500
        assert (await transport.request("POST", url, b"{}", 5.0))[:2] == (200, b"{}")
    finally:
        await transport.close()
    assert server.requests[-1] == (2, 1)  # answered on a new connection


async def test_dead_pooled_connections_never_fail_a_request(
        serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    """Every pooled connection is dead by its next use; each request still gets its answer."""
    async def one_answer_per_connection(server: RawServer, conn: int, nth: int
                                        ) -> bytes | None:
        return OK if nth == 1 else None

    server = await serve(one_answer_per_connection)
    transport = AiohttpTransport()
    url = f"http://127.0.0.1:{server.port}/v2/models/m/infer"
    try:
        for _ in range(3):
            answers = await asyncio.gather(*(transport.request("POST", url, b"{}", 5.0)
                                             for _ in range(4)))
            assert [a[:2] for a in answers] == [(200, b"{}")] * 4
    finally:
        await transport.close()
    assert sum(1 for _, nth in server.requests if nth > 1) >= 4  # the pool was reused, and died


async def test_a_fresh_connection_closed_without_an_answer_is_502_not_retried(
        serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def never_answer(server: RawServer, conn: int, nth: int) -> bytes | None:
        return None

    server = await serve(never_answer)
    transport = AiohttpTransport()
    try:
        with pytest.raises(UpstreamError, match="cannot reach the upstream model server"):
            await transport.request("POST", f"http://127.0.0.1:{server.port}/", b"{}", 5.0)
    finally:
        await transport.close()
    assert server.requests == [(1, 1)]  # sent once: the upstream may have acted on it
