"""The LLM upstream client's connections: a stream read to its end hands its connection back
to the pool (the next stream pays no new connect before its first token), and one closed
early (the client went away) closes its connection, so the upstream stops generating."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import pytest
from aiohttp import web

from modelfence.config.llm import LlmModel
from modelfence.llm.upstream import LlmUpstream


class Upstream:
    """An SSE upstream on loopback that notes each request's connection (the client's port)
    and whether a stream was cut off by the client."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.cut_off = asyncio.Event()
        self.url = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.ports.append(request.transport.get_extra_info("peername")[1])
        events = 200 if (await request.json()).get("model") == "slow" else 3
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(events):
                await resp.write(f'data: {{"n": {i}}}\n\n'.encode())
                await asyncio.sleep(0.05 if events > 3 else 0)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.cut_off.set()
            raise
        return resp


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    yield server
    await runner.cleanup()


async def _read_all(client: LlmUpstream, model: LlmModel) -> bytes:
    data = b""
    async for chunk in await client.stream(model, "/chat/completions", b'{"model": "ok"}'):
        data += chunk
    return data


async def test_finished_streams_reuse_one_connection(upstream: Upstream) -> None:
    client = LlmUpstream()
    model = LlmModel(name="m", upstream=upstream.url)
    try:
        for _ in range(3):
            assert (await _read_all(client, model)).endswith(b"data: [DONE]\n\n")
    finally:
        await client.close()
    assert len(upstream.ports) == 3
    assert len(set(upstream.ports)) == 1, "a finished stream gave up its pooled connection"


async def test_a_stream_closed_early_closes_its_connection(upstream: Upstream) -> None:
    client = LlmUpstream()
    model = LlmModel(name="m", upstream=upstream.url)
    try:
        chunks = await client.stream(model, "/chat/completions", b'{"model": "slow"}')
        assert isinstance(chunks, AsyncGenerator)
        assert (await anext(chunks)).startswith(b"data: ")
        await chunks.aclose()  # what the relay does when the client goes away
        await asyncio.wait_for(upstream.cut_off.wait(), 5)
        assert (await _read_all(client, model)).endswith(b"data: [DONE]\n\n")
    finally:
        await client.close()
    assert len(upstream.ports) == 2
    assert upstream.ports[0] != upstream.ports[1], "a cut-off connection went back to the pool"
