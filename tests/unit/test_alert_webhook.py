"""The alert webhook sender against a real HTTP server on loopback: a redirect is not
followed (the signed alert would reach a host nobody configured), and is logged and counted."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from modelfence.config import WebhookSettings
from modelfence.monitor.alerts import Webhook


class Receiver:
    def __init__(self) -> None:
        self.hook = self.elsewhere = 0


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    seen = Receiver()

    async def hook(request: web.Request) -> web.Response:
        seen.hook += 1
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        seen.elsewhere += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/elsewhere", elsewhere)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield seen, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


async def test_a_webhook_redirect_is_not_followed(receiver: tuple[Receiver, str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    seen, base = receiver
    errors: list[str] = []
    hook = Webhook(WebhookSettings(url=f"{base}/hook?token=s3cret", timeout_s=5),
                   b"k" * 32, on_error=errors.append)
    with caplog.at_level(logging.WARNING, logger="modelfence.monitor"):
        hook.send({"type": "monitor.alert"})
        await hook.close()
    assert (seen.hook, seen.elsewhere) == (1, 0)
    assert errors == ["redirect"]
    assert "alert webhook to 127.0.0.1 answered a redirect (307); not followed" in caplog.text
    assert "s3cret" not in caplog.text
