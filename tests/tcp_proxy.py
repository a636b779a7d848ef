"""A loopback TCP proxy that can be cut and restored: store outages without touching the
machine's Redis or PostgreSQL.

The proxy runs its own event loop in a thread, so it keeps forwarding while the test
blocks (starting a gateway, running the CLI). `cut()` closes the listening socket (new
connections are refused, as by a host that is down) and aborts every open connection
(both ends see a reset); `restore()` listens again on the same port.

    with TcpProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        ...
        proxy.cut()
        ...
        proxy.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

_CHUNK = 64 * 1024
_CALL_TIMEOUT_S = 5.0


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # accepted and forwarded since the start
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()

    # -- called from the test's thread -------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._call(self._cut())

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self._call(self._listen())

    @property
    def is_cut(self) -> bool:
        return self._server is None

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_CALL_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=_CALL_TIMEOUT_S)

    # -- on the proxy's loop -----------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            raise
        self._server = await asyncio.start_server(self._accept, sock=sock, backlog=128)
        self.port = int(sock.getsockname()[1])

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _shutdown(self) -> None:
        await self._cut()  # the aborted connections end their handlers
        if self._tasks:
            _, stragglers = await asyncio.wait(set(self._tasks), timeout=1.0)
            for task in stragglers:
                task.cancel()
            await asyncio.gather(*stragglers, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            if self._server is None:  # accepted just before a cut
                return
            try:
                upstream_r, upstream_w = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.connections += 1
            self._transports.update((client_w.transport, upstream_w.transport))
            await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
        except asyncio.CancelledError:
            pass  # shutting down; a cancelled handler task would be logged by asyncio
        finally:
            for w in (client_w, upstream_w):
                if w is not None:
                    self._transports.discard(w.transport)
                    w.transport.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
