"""The connection pool of the lean HTTP/1.1 client (http1.py).

Connections are kept per (scheme, host, port), the most recently used first, and closed
after `idle_s` unused. At most `max_connections` are in use at once; a request beyond that
waits for one, within its own timeout, as aiohttp's connector does. `https` is verified
against the system's CAs and the upstream's host name, with no way to turn that off.

A request that finds its pooled connection closed by the upstream before any byte of the
answer (the upstream dropped an idle connection just as the request left) is sent once more
on a new connection, as RFC 9112 §9.3.1 allows: the upstream never answered it. Once any
byte of an answer arrived, or on a new connection, a POST is never sent again.
"""

from __future__ import annotations

import asyncio
import ssl

from .http1 import Connection, ConnectTimeout, Stale, Target, request_head

IDLE_S = 30.0


class Http1Pool:
    """Made inside the running loop; `close` closes every connection, in use or idle."""

    def __init__(self, *, max_connections: int, connect_timeout_s: float,
                 idle_s: float = IDLE_S) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout = connect_timeout_s
        self._idle_s = idle_s
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def post(self, to: Target, path: str, body: bytes, authorization: str | None,
                   timeout_s: float, limit: int) -> tuple[int, bytes, str | None]:
        """Status, body (at most `limit` bytes, else `BodyTooLarge`) and Retry-After."""
        conn = await self.send(to, path, body, authorization, timeout_s, stream=False,
                               limit=limit)
        try:
            data = await conn.body()
        except BaseException:
            self.release(conn)
            raise
        status, retry_after = conn.status, conn.retry_after
        self.release(conn)
        return status, data, retry_after

    async def send(self, to: Target, path: str, body: bytes, authorization: str | None,
                   timeout_s: float, *, stream: bool, limit: int | None = None
                   ) -> Connection:
        """POST and wait for the answer's headers; the connection, whose body the caller
        reads (`Connection.body` or `.chunk`) before handing it back with `release`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        data = request_head(to, path, len(body), authorization) + body
        if self._slots.locked():
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        conn: Connection | None = None
        try:
            conn = self._pooled(to.key) or await self._connect(to, deadline)
            conn.begin(data, deadline, stream=stream, limit=limit)
            try:
                await conn.head()
            except Stale:  # the upstream never saw it: once more, on a new connection
                conn.end()
                conn.close()
                conn = None
                conn = await self._connect(to, deadline)
                conn.begin(data, deadline, stream=stream, limit=limit)
                await conn.head()
            return conn
        except BaseException:
            if conn is not None:
                conn.end()
                conn.close()
            self._slots.release()
            raise

    def release(self, conn: Connection) -> None:
        """Hand back a connection from `send`: pooled if its answer was read to the end
        and it may carry another, else closed (the upstream sees a stream cut off)."""
        if conn.end() and not self._closed:
            conn.idle_handle = asyncio.get_running_loop().call_later(
                self._idle_s, self._expire, conn)
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()
        self._slots.release()

    def discard(self, conn: Connection) -> None:
        """Close a connection from `send` and free its place; needs no running loop (an
        abandoned stream collected by the garbage collector)."""
        conn.end()
        conn.close()
        self._slots.release()

    def lost(self, conn: Connection) -> None:
        """A connection closed (by either side)."""
        self._open.discard(conn)
        self._unidle(conn)

    def _unidle(self, conn: Connection) -> None:
        stack = self._idle.get(conn.key)
        if stack and conn in stack:
            stack.remove(conn)

    async def close(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                if conn.idle_handle is not None:
                    conn.idle_handle.cancel()
        self._idle.clear()
        for conn in list(self._open):
            conn.close()
        await asyncio.sleep(0)

    def _pooled(self, key: tuple[str, str, int]) -> Connection | None:
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if conn.idle_handle is not None:
                conn.idle_handle.cancel()
                conn.idle_handle = None
            if not conn.closing():
                conn.reused = True
                return conn
        return None

    def _expire(self, conn: Connection) -> None:
        conn.idle_handle = None
        self._unidle(conn)
        conn.close()

    async def _connect(self, to: Target, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        left = max(0.0, deadline - loop.time())
        tls = None
        if to.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()  # verifies the chain and host name
            tls = self._tls
        try:
            async with asyncio.timeout(min(self._connect_timeout, left)):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, to.key), to.host, to.port, ssl=tls)
        except TimeoutError:
            if self._connect_timeout <= left:
                raise ConnectTimeout() from None
            raise
        self._open.add(conn)
        return conn
