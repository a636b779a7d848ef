"""An HTTP collector on loopback for the SIEM tests: records what it was sent, answers the
statuses a test gives, and can go away and come back on the same port."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field

from aiohttp import web

from ..support import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.perf_counter)  # when it arrived


@dataclass
class Collector:
    port: int = field(default_factory=free_port)
    path: str = "/services/collector/event"
    statuses: list[int] = field(default_factory=list)  # answered first, then 200
    received: list[Received] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    async def _take(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.received.append(Received(dict(request.headers), body))
            return web.json_response({"text": "Success", "code": 0})
        return web.json_response({"text": "no", "code": 6}, status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
