"""A lean HTTP/1.1 client for the LLM upstreams' POSTs, on asyncio protocols and httptools.

Why not aiohttp here: its client machinery costs about 0.2 ms of CPU per request (measured
against about 0.03 ms for a bare asyncio exchange), which a chat pays before its first
token. This client does only what the gateway's upstream calls need: one POST per
connection at a time, the answer's status, Retry-After and body (by Content-Length, chunked
or read until close), parsed by httptools (llhttp, Node's HTTP parser). No redirects, no
cookies, no proxies, no compression. The pool is in http1_pool.py.

A connection is reusable only when its answer was read to the end, was HTTP/1.1 without
`Connection: close`, and was not a 5xx (a server whose handler crashed may close it without
saying so). A streamed answer's chunks are handed over as they arrive; reading pauses while
more than `HIGH_WATER` bytes wait for the reader.
"""

from __future__ import annotations

import asyncio
import base64
from collections import deque
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import httptools

#: Buffered bytes of a streamed answer above which the socket is no longer read.
HIGH_WATER = 64 * 1024


class Http1Error(Exception):
    """The upstream could not be reached, broke off, or answered what is not HTTP."""


class BodyTooLarge(Http1Error):
    """The answer's body is larger than the caller's limit."""


class ConnectTimeout(TimeoutError):
    """No connection within the connect timeout."""


class Stale(Http1Error):
    """A reused connection closed before any byte of the answer: the request may be sent
    again on a new connection (RFC 9112 §9.3.1)."""


class Owner(Protocol):
    def lost(self, conn: Connection) -> None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where an upstream base URL's requests go, parsed once."""

    key: tuple[str, str, int]  # scheme, host, port: the pool's key
    host: str
    port: int
    tls: bool
    host_header: str
    path: str  # the base path, percent-encoded
    basic: str | None  # an Authorization from the URL's user:password, if any


def target(url: str) -> Target:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise Http1Error("an unreadable upstream URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise Http1Error("an upstream URL that is not http(s)://host")
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    port = port or default
    shown = f"[{host}]" if ":" in host else host
    basic = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        basic = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    path = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        raise Http1Error("an upstream URL with a query")
    return Target((parts.scheme, host, port), host, port, tls,
                  shown if port == default else f"{shown}:{port}", path, basic)


def request_head(to: Target, path: str, length: int, authorization: str | None) -> bytes:
    """The head of `POST base path`: nothing beyond what the upstream needs (no User-Agent)."""
    auth = authorization or to.basic
    extra = f"Authorization: {auth}\r\n" if auth else ""
    head = (f"POST {to.path}{path} HTTP/1.1\r\nHost: {to.host_header}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n")
    if auth and ("\r" in auth or "\n" in auth):
        raise Http1Error("a header value with a line break")
    try:
        return head.encode("latin-1")
    except UnicodeEncodeError:
        raise Http1Error("a header value that is not Latin-1") from None


class Connection(asyncio.Protocol):
    """One upstream connection; `begin` starts an exchange, whose answer is read with
    `head`, then `body` or `chunk`; its owner hands it back or closes it."""

    def __init__(self, owner: Owner, key: tuple[str, str, int]) -> None:
        self.key = key
        self.reused = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._active = False
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._start(stream=False, limit=None)

    def _start(self, *, stream: bool, limit: int | None) -> None:
        self.status = 0
        self.retry_after: str | None = None
        self._stream = stream
        self._limit = limit
        self._length: int | None = None  # Content-Length
        self._chunked = False
        self._interim = False  # a 1xx answer, before the real one
        self._got = False  # any byte of the answer
        self._headers = False
        self._complete = False
        self._keep = True
        self._exc: BaseException | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._total = 0
        self._paused = False

    # -- the exchange, as its owner drives it --------------------------------------------
    def begin(self, data: bytes, deadline: float, *, stream: bool, limit: int | None) -> None:
        """Send a request; the answer must be whole by `deadline` (the loop's clock)."""
        self._start(stream=stream, limit=limit)
        self._active = True
        assert self._transport is not None
        self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)
        self._transport.write(data)

    def end(self) -> bool:
        """The exchange is over; whether the connection may carry another."""
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._chunks.clear()
        return (self._complete and self._keep and self._exc is None and self.status < 500
                and not self.closing())

    def closing(self) -> bool:
        return self._lost or self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def head(self) -> None:
        """Wait for the answer's status and headers."""
        while not self._headers:
            await self._next()

    async def body(self) -> bytes:
        """The whole body (a non-streamed exchange)."""
        while not self._complete:
            await self._next()
        return b"".join(self._chunks)

    async def chunk(self) -> bytes | None:
        """What arrived of a streamed body since the last call; None at its end."""
        while True:
            if self._chunks:
                data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(
                    self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                return data
            if self._complete:
                return None
            await self._next()

    async def _next(self) -> None:
        if self._exc is not None:
            raise self._exc
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._exc is not None:
            raise self._exc

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None and not self._complete:
            self._exc = exc
        self._keep = False
        self.close()
        self._wake()

    def _expire(self) -> None:
        self._timer = None
        self._fail(TimeoutError())

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._active or self._complete:
            self._keep = False  # bytes nobody asked for: this connection is not reused
            self.close()
            return
        self._got = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._fail(Http1Error("an answer that is not HTTP/1.1"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self._owner.lost(self)
        if not self._active or self._complete or self._exc is not None:
            return
        if self._headers and self._length is None and not self._chunked \
                and self.status not in (204, 304):  # a body read until close: complete
            self._complete = True
            self._keep = False
            self._wake()
        elif not self._got and self.reused:
            self._fail(Stale("a pooled connection was closed"))
        else:
            self._fail(Http1Error("the connection broke off"))

    # -- httptools' callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:  # a second answer on one request
            raise Http1Error("more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self.retry_after = value.decode("latin-1")
        elif name == b"content-length":
            self._length = int(value)
        elif name == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self._interim = True
            return
        self.status = status
        self._headers = True
        if self._limit is not None and self._length is not None and self._length > self._limit:
            self._fail(BodyTooLarge())
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._exc is not None:
            return
        self._chunks.append(body)
        if self._limit is not None:
            self._total += len(body)
            if self._total > self._limit:
                self._fail(BodyTooLarge())
        if self._stream:
            self._buffered += len(body)
            if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self._interim:  # the real answer follows
            self._interim = False
            self.retry_after, self._length, self._chunked = None, None, False
            return
        self._complete = True
        if not self._parser.should_keep_alive() or self._parser.get_http_version() != "1.1":
            self._keep = False
        self._wake()

