"""Bound how long a request body may take, and tell a leaving client from a server failure.

A caller that sends a request head and then stalls its body would otherwise hold a
connection and a worker slot for as long as it likes (issue: 2,048 stalled bodies froze
the gateway). This ASGI middleware wraps `receive` while the body is arriving: the whole
body must arrive within `body_timeout_s` of the request's start and no gap between two
chunks may exceed `body_gap_timeout_s` (a 408 that closes the connection otherwise).

granian reports a client that closes mid-body, and a chunked body it cannot parse (a
chunk-size line that overflows), with the same `http.disconnect` message. With a
Content-Length the only cause is the client leaving: that is `ClientDisconnected`
(recorded as status 499, counted apart, never an internal error). A chunked body that
ends early is answered 400, because a client still listening sent a malformed body.

Once the body is complete, `receive` passes through untouched: a streamed answer waits
on it for the disconnect, which must not time out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadRequest, ClientDisconnected, RequestTimeout

log = logging.getLogger("modelfence.gateway")


class BodyDeadline:
    """ASGI middleware: every HTTP body read in the app gets the same time bounds."""

    def __init__(self, app: ASGIApp, *, body_timeout_s: float, gap_timeout_s: float,
                 on_timeout: Callable[[], None] = lambda: None,
                 on_disconnect: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self._total = body_timeout_s
        self._gap = min(gap_timeout_s, body_timeout_s)
        self._on_timeout = on_timeout
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, _BoundedReceive(self, scope, receive), send)


class _BoundedReceive:
    """`receive` for one request: bounded until the last body chunk, then a pass-through."""

    __slots__ = ("_deadline", "_done", "_mw", "_receive", "_scope")

    def __init__(self, mw: BodyDeadline, scope: Scope, receive: Receive) -> None:
        self._mw = mw
        self._scope = scope
        self._receive = receive
        self._deadline = time.monotonic() + mw._total
        self._done = False

    async def __call__(self) -> Message:
        if self._done:
            return await self._receive()
        mw = self._mw
        now = time.monotonic()
        wait = min(mw._gap, self._deadline - now)
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                message = await self._receive()
        except TimeoutError:
            self._done = True
            mw._on_timeout()
            whole = self._deadline - now <= mw._gap
            log.debug("request body on %s timed out (%s)", self._scope.get("path"),
                      "whole body" if whole else "gap between chunks")
            raise RequestTimeout(
                f"request body did not arrive in time: the whole body must arrive within "
                f"{mw._total:g} s and no pause between its parts may exceed {mw._gap:g} s"
            ) from None
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self._done = True
            return message
        self._done = True
        if kind == "http.disconnect":
            raise self._ended_early()
        return message

    def _ended_early(self) -> Exception:
        chunked = any(k == b"transfer-encoding" and b"chunked" in v.lower()
                      for k, v in self._scope.get("headers", ()))
        if chunked:
            log.debug("chunked request body on %s ended early or is malformed",
                      self._scope.get("path"))
            return BadRequest("request body: the chunked encoding is malformed or ended early "
                              "(e.g. a chunk-size line that is not a hexadecimal size that "
                              "fits in 64 bits)", reason="bad_chunked_body")
        self._mw._on_disconnect()
        log.debug("client left before sending the whole body on %s", self._scope.get("path"))
        return ClientDisconnected("the client closed the connection before sending the whole "
                                  "request body")
