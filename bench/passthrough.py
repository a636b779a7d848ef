"""The minimal "same stack" proxy: Starlette on granian, one pooled aiohttp ClientSession.

Forwards every GET and POST (path and body, nothing else) to `BENCH_UPSTREAM_URL` and
returns the upstream's status, body and content type. No checks of any kind: this is the
floor a Python gateway on this stack cannot go below. Its connection pool is configured
as modelfence's `AiohttpTransport` is (limit 100, keep-alive 30 s, no User-Agent).

Run: ``granian --interface asgi --factory passthrough:create_app`` (with bench/ on the path).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM_ENV = "BENCH_UPSTREAM_URL"
TIMEOUT_S = 10.0


class Forwarder:
    """Owns the session; made inside the server's event loop by the app's lifespan."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
            headers={"Content-Type": "application/json"},
            skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        ) as session:
            self._session = session
            yield
            self._session = None

    async def forward(self, request: Request) -> Response:
        assert self._session is not None, "lifespan did not run"
        body = await request.body()
        url = self._upstream + request.url.path
        async with self._session.request(request.method, url, data=body or None) as resp:
            data = await resp.read()
            return Response(data, resp.status, media_type=resp.content_type)


def create_app() -> Starlette:
    """granian's factory target."""
    forwarder = Forwarder(os.environ[UPSTREAM_ENV])
    return Starlette(routes=[Route("/{path:path}", forwarder.forward, methods=["GET", "POST"])],
                     lifespan=forwarder.lifespan)
