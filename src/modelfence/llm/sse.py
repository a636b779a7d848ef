"""A server-sent-events response that costs the first token as little as possible.

Starlette's `StreamingResponse` (on ASGI 2.3 servers such as granian) runs every stream in
an anyio task group with a second task listening for the disconnect; measured here, that
added about 0.17 ms before the first event. This response sends from the handler's own
task and watches for the disconnect with one plain asyncio task: when the client leaves,
the handler is cancelled where it waits (usually on the upstream), the event iterator is
closed — which closes the upstream request — and the cancellation is absorbed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("modelfence.llm")


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str], *,
                 on_close: Callable[[], None] | None = None) -> None:
        # As StreamingResponse does: no body, so no Content-Length header.
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._events = events
        self._on_close = on_close  # runs last, always: an iterator never started cleans nothing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        me = asyncio.current_task()
        assert me is not None
        left = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            left.set()
            me.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not left.is_set():
                raise  # not ours: the server is shutting down
            me.uncancel()
        except OSError:
            pass  # the client went away between two events
        finally:
            watcher.cancel()
            aclose = getattr(self._events, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            except Exception:
                log.debug("closing an SSE stream failed", exc_info=True)
            finally:
                if self._on_close is not None:
                    self._on_close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
