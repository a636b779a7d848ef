"""The lean HTTP/1.1 client of the LLM upstreams (llm/http1.py, http1_pool.py), through
`LlmUpstream` where the gateway's errors are the point, against raw asyncio servers on
loopback that write any framing asked of them: connections reused only when they may be,
bodies by length, chunked or until close, every failure a 502 or 504 with today's message,
a POST sent twice only when a pooled connection closed before any byte of its answer, the
connection limit, a stream's flow control, https verified, an upstream that never accepts a
connection, and IPv6; and the upstream URLs that neither this client nor aiohttp can use,
refused when the configuration is loaded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelfence.backends.upstream_status import BUSY_RETRY_S
from modelfence.config import settings_from_mapping
from modelfence.config.llm import LlmModel
from modelfence.errors import ConfigurationError, Unavailable, UpstreamError, UpstreamTimeout
from modelfence.llm.http1 import HIGH_WATER, BodyTooLarge, target
from modelfence.llm.http1_pool import Http1Pool
from modelfence.llm.upstream import LlmUpstream

from ..rsyslog_daemon import make_certs


@dataclass
class Request:
    port: int  # the client's port: one per connection
    path: str
    headers: dict[str, str]
    body: bytes


Answer = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Raw:
    """An upstream that answers each request with what `answer` writes (True: read the next
    request on this connection) and notes connections, requests and closed connections."""

    answer: Answer
    port: int = 0
    connections: int = 0
    closed: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    requests: list[Request] = field(default_factory=list)
    cut_off: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        port = writer.get_extra_info("peername")[1]
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                _, path, _ = head[0].split(" ")
                headers = {k.lower(): v for k, _, v in
                           (line.partition(": ") for line in head[1:] if line)}
                body = await reader.readexactly(int(headers["content-length"]))
                self.requests.append(Request(port, path, headers, body))
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                try:
                    more = await self.answer(self.requests[-1], reader, writer)
                finally:
                    self.in_flight -= 1
                await writer.drain()
                if not more:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}/v1"


Serve = Callable[..., Awaitable[Raw]]
CANNOT_REACH = r"^cannot reach the upstream model server$"


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[tuple[asyncio.Server, Raw]] = []

    async def start(answer: Answer, tls: ssl.SSLContext | None = None,
                    host: str = "127.0.0.1") -> Raw:
        raw = Raw(answer)
        server = await asyncio.start_server(raw.handle, host, 0, ssl=tls)
        raw.port = server.sockets[0].getsockname()[1]
        servers.append((server, raw))
        return raw

    yield start
    for server, raw in servers:
        server.close()
        for writer in raw.writers:
            writer.close()
        await server.wait_closed()
    await asyncio.sleep(0.01)


def answer(status: str = "200 OK", body: bytes = b'{"ok": true}', *, headers: str = "",
           version: str = "HTTP/1.1", more: bool = True) -> Answer:
    async def write(req: Request, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        writer.write(f"{version} {status}\r\nContent-Type: application/json\r\n{headers}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        return more
    return write


def chunked(parts: list[bytes], pause_s: float = 0.01) -> Answer:
    async def write(req: Request, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(pause_s)
        writer.write(b"0\r\n\r\n")
        return True
    return write


def model(raw: Raw, timeout_s: float = 5.0, name: str = "m", **kwargs: object) -> LlmModel:
    return LlmModel(name=name, upstream=raw.url(), timeout_s=timeout_s,
                    **kwargs)  # type: ignore[arg-type]


async def post(client: LlmUpstream, m: LlmModel, body: bytes = b'{"q": 1}') -> bytes:
    return await client.post(m, "/chat/completions", body)


async def read_stream(client: LlmUpstream, m: LlmModel) -> list[bytes]:
    return [chunk async for chunk in await client.stream(m, "/chat/completions", b"{}")]


async def test_keep_alive_reuses_one_connection_and_sends_only_what_is_needed(
        serve: Serve, tmp_path: Path) -> None:
    raw = await serve(answer())
    key = tmp_path / "key"
    key.write_text("sk-upstream\n")
    client = LlmUpstream()
    try:
        assert await post(client, model(raw)) == b'{"ok": true}'
        keyed = model(raw, name="keyed", api_key_file=key)
        assert await post(client, keyed, b'{"q": 2}') == b'{"ok": true}'
    finally:
        await client.close()
    assert raw.connections == 1 and len(raw.requests) == 2
    first, second = raw.requests
    assert first.path == "/v1/chat/completions" and first.body == b'{"q": 1}'
    assert first.headers == {"host": f"127.0.0.1:{raw.port}",
                             "content-type": "application/json", "content-length": "8"}
    assert second.headers["authorization"] == "Bearer sk-upstream"
    assert set(second.headers) == {"host", "content-type", "content-length", "authorization"}


async def test_a_chunked_body_is_read_whole_or_streamed_and_the_connection_reused(
        serve: Serve) -> None:
    parts = [b'{"a": ', b"1", b', "b": 2}']
    raw = await serve(chunked(parts))
    client = LlmUpstream()
    try:
        assert await post(client, model(raw)) == b"".join(parts)
        assert b"".join(await read_stream(client, model(raw))) == b"".join(parts)
        assert len(await read_stream(client, model(raw))) == 3, "chunks were held back"
    finally:
        await client.close()
    assert raw.connections == 1 and len(raw.requests) == 3


async def test_connection_close_and_http_1_0_answers_are_not_reused(serve: Serve) -> None:
    closing = await serve(answer(headers="Connection: close\r\n"))  # the server keeps reading
    old = await serve(answer(version="HTTP/1.0", headers="Connection: keep-alive\r\n"))

    async def until_close(req: Request, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"until\": ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b'"close"}')
        return False
    eof = await serve(until_close)
    client = LlmUpstream()
    try:
        for raw in (closing, old):
            for _ in range(2):
                assert await post(client, model(raw)) == b'{"ok": true}'
            assert raw.connections == 2
        for _ in range(2):
            assert await post(client, model(eof)) == b'{"until": "close"}'
        assert b"".join(await read_stream(client, model(eof))) == b'{"until": "close"}'
    finally:
        await client.close()


async def test_an_interim_1xx_answer_is_skipped(serve: Serve) -> None:
    async def continues(req: Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\nRetry-After: 99\r\n\r\n")
        return await answer("429 Too Many Requests")(req, reader, writer)
    raw = await serve(continues)
    client = LlmUpstream()
    try:
        with pytest.raises(Unavailable) as err:
            await post(client, model(raw))
    finally:
        await client.close()
    assert err.value.retry_after_s == BUSY_RETRY_S  # the 100's Retry-After is not the 429's


async def test_an_oversized_body_is_a_502(serve: Serve) -> None:
    async def huge(req: Request, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n{")
        await asyncio.sleep(10)  # the body never comes: refused by its announced length
        return False
    raw = await serve(huge)
    client = LlmUpstream()
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamError, match="oversized body") as err:
            await post(client, model(raw))
    finally:
        await client.close()
    assert err.value.status == 502 and time.monotonic() - started < 2
    # a chunked body has no length to refuse early: counted as it arrives
    raw = await serve(chunked([b"x" * 600, b"y" * 600]))
    pool = Http1Pool(max_connections=2, connect_timeout_s=2)
    try:
        with pytest.raises(BodyTooLarge):
            await pool.post(target(raw.url()), "/chat/completions", b"{}", None, 5, 1000)
        assert await pool.post(target(raw.url()), "/c", b"{}", None, 5, 1200) == (
            200, b"x" * 600 + b"y" * 600, None)
    finally:
        await pool.close()


async def test_a_slow_upstream_is_a_504(serve: Serve) -> None:
    async def slow(req: Request, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> bool:
        if req.body == b"{}":  # a stream: its headers and one event, then nothing
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"9\r\ndata: 1\n\n\r\n")
        await asyncio.sleep(2)
        return False
    raw = await serve(slow)
    client = LlmUpstream()
    try:
        with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.3 s") as err:
            await post(client, model(raw, timeout_s=0.3))
        assert err.value.status == 504
        chunks = await client.stream(model(raw, timeout_s=0.3), "/chat/completions", b"{}")
        assert await anext(chunks) == b"data: 1\n\n"
        with pytest.raises(UpstreamTimeout, match=r"did not finish within 0\.3 s"):
            await anext(chunks)
    finally:
        await client.close()


async def test_a_refused_connection_or_garbage_is_a_502(serve: Serve) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed

    async def garbage(req: Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        return True
    raw = await serve(garbage)
    client = LlmUpstream()
    refused = LlmModel(name="m", upstream=f"http://127.0.0.1:{port}/v1")
    try:
        for call in (post(client, refused), read_stream(client, refused),
                     post(client, model(raw)), read_stream(client, model(raw))):
            with pytest.raises(UpstreamError, match=CANNOT_REACH):
                await call
    finally:
        await client.close()
    assert len(raw.requests) == 2


async def test_a_redirect_is_not_followed_and_a_429_is_a_503_with_its_retry_after(
        serve: Serve) -> None:
    moved = await serve(answer("302 Found", b"", headers="Location: /v1/elsewhere\r\n"))
    busy = await serve(answer("429 Too Many Requests", b'{"error": "busy"}',
                              headers="Retry-After: 7\r\n"))
    client = LlmUpstream()
    try:
        for call in (post(client, model(moved)), read_stream(client, model(moved))):
            with pytest.raises(UpstreamError, match="redirect") as err:
                await call
            assert err.value.status == 502
        for call in (post(client, model(busy)), read_stream(client, model(busy))):
            with pytest.raises(Unavailable) as unavailable:
                await call
            assert unavailable.value.status == 503 and unavailable.value.retry_after_s == 7
    finally:
        await client.close()
    assert [r.path for r in moved.requests] == ["/v1/chat/completions"] * 2


async def test_a_pooled_connection_closed_before_its_answer_is_retried_once(
        serve: Serve) -> None:
    async def drops_second(req: Request, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> bool:
        on_this = [r for r in raw.requests if r.port == req.port]
        if len(on_this) == 2:  # the idle connection, closed as the request arrived
            return False
        await answer()(req, reader, writer)
        return True
    raw = await serve(drops_second)
    client = LlmUpstream()
    try:
        assert await post(client, model(raw)) == b'{"ok": true}'
        assert await post(client, model(raw)) == b'{"ok": true}'  # sent again, answered
        assert raw.connections == 2 and len(raw.requests) == 3
        assert b"".join(await read_stream(client, model(raw))) == b'{"ok": true}'
        assert raw.connections == 3 and len(raw.requests) == 5
    finally:
        await client.close()


async def test_a_post_is_never_sent_twice_once_an_answer_began_or_on_a_new_connection(
        serve: Serve) -> None:
    async def breaks(req: Request, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
        if req.body == b'{"q": 1}':
            await answer()(req, reader, writer)
            return True
        if req.body == b'{"q": 2}':
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")  # half an answer
        return False  # {"q": 3}: a new connection closed without a byte
    raw = await serve(breaks)
    client = LlmUpstream()
    try:
        assert await post(client, model(raw)) == b'{"ok": true}'
        for body in (b'{"q": 2}', b'{"q": 3}'):
            with pytest.raises(UpstreamError, match=CANNOT_REACH):
                await post(client, model(raw), body)
    finally:
        await client.close()
    assert [r.body for r in raw.requests] == [b'{"q": 1}', b'{"q": 2}', b'{"q": 3}']


async def test_idle_and_5xx_connections_are_closed(serve: Serve) -> None:
    ok = await serve(answer())
    failing = await serve(answer("500 Internal Server Error", b'{"error": "boom"}'))
    pool = Http1Pool(max_connections=4, connect_timeout_s=2, idle_s=0.5)
    try:
        for _ in range(2):
            assert (await pool.post(target(failing.url()), "/c", b"{}", None, 5, 100))[0] == 500
        assert failing.connections == 2, "a connection that carried a 5xx was reused"
        await pool.post(target(ok.url()), "/c", b"{}", None, 5, 100)
        await asyncio.sleep(0.1)
        assert ok.closed == 0
        await asyncio.sleep(0.9)
        assert ok.closed == 1, "an idle connection outlived idle_s"
    finally:
        await pool.close()


async def test_a_stream_closed_early_closes_its_connection(serve: Serve) -> None:
    async def events(req: Request, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
        event = b"data: 0\n\n"
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        # nothing more is sent: only a closed connection tells the upstream to stop
        if await asyncio.wait_for(reader.read(1), 3) == b"":
            raw.cut_off.set()
        return False
    raw = await serve(events)
    client = LlmUpstream()
    try:
        chunks = await client.stream(model(raw), "/chat/completions", b"{}")
        assert (await anext(chunks)).startswith(b"data: 0")
        await chunks.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(raw.cut_off.wait(), 3)
    finally:
        await client.close()


@pytest.mark.parametrize("how", ["closed unread", "dropped"])
async def test_a_stream_never_read_frees_its_connection(serve: Serve, how: str) -> None:
    async def hangs(req: Request, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        if req.body == b"{}":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), 3) == b"":
                raw.cut_off.set()
            return False
        return await answer()(req, reader, writer)
    raw = await serve(hangs)
    client = LlmUpstream(max_connections=1)
    try:
        chunks = await client.stream(model(raw), "/chat/completions", b"{}")
        if how == "dropped":
            del chunks
            gc.collect()
        else:  # what the relay does when the client left before the first event
            await chunks.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(raw.cut_off.wait(), 3)
        assert await post(client, model(raw, timeout_s=1)) == b'{"ok": true}'
    finally:
        await client.close()


async def test_a_stream_stops_reading_while_its_reader_lags(serve: Serve) -> None:
    block = b"z" * 65536
    raw = await serve(chunked([block] * 256, pause_s=0))  # 16 MiB as fast as it goes
    pool = Http1Pool(max_connections=2, connect_timeout_s=2)
    try:
        conn = await pool.send(target(raw.url()), "/c", b"{}", None, 10, stream=True)
        got = len(await conn.chunk() or b"")
        await asyncio.sleep(0.3)
        assert conn._buffered <= HIGH_WATER + 512 * 1024, "reading did not pause"
        while (chunk := await conn.chunk()) is not None:
            got += len(chunk)
        pool.release(conn)
        assert got == len(block) * 256
    finally:
        await pool.close()


async def test_at_most_max_connections_are_in_use(serve: Serve) -> None:
    async def slowish(req: Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3 if req.body == b"{}" else 0.1)
        return await answer()(req, reader, writer)
    raw = await serve(slowish)
    client = LlmUpstream(max_connections=2)
    try:
        answers = await asyncio.gather(*(post(client, model(raw)) for _ in range(6)))
        assert answers == [b'{"ok": true}'] * 6
        assert raw.most_in_flight == 2 and raw.connections == 2
        # a request that waits for a connection past its timeout is a 504
        slow = model(raw, timeout_s=0.45)  # two answered at 0.3 s, the third due at 0.6 s
        results = await asyncio.gather(*(post(client, slow, b"{}") for _ in range(3)),
                                       return_exceptions=True)
        assert sum(isinstance(r, UpstreamTimeout) for r in results) == 1, results
    finally:
        await client.close()


async def test_https_is_verified(serve: Serve, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "good", "localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certs.cert, certs.key)
    raw = await serve(answer(), tls=server_tls)
    wrong = make_certs(tmp_path / "wrong", "elsewhere")
    wrong_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    wrong_tls.load_cert_chain(wrong.cert, wrong.key)
    misnamed = await serve(answer(), tls=wrong_tls)
    client = LlmUpstream()
    https = LlmModel(name="m", upstream=raw.url("https", "localhost"))
    try:
        with pytest.raises(UpstreamError, match=CANNOT_REACH):
            await post(client, https)  # a CA the system does not trust
        assert raw.requests == []
        pool = client._lean_pool()  # the same server, its CA trusted: answered
        pool._tls = ssl.create_default_context(cafile=certs.ca)
        assert await post(client, https) == b'{"ok": true}'
        pool._tls.load_verify_locations(wrong.ca)  # trusted, but not named localhost
        with pytest.raises(UpstreamError, match=CANNOT_REACH):
            await post(client, LlmModel(name="m", upstream=misnamed.url("https", "localhost")))
        assert misnamed.requests == []
    finally:
        await client.close()


async def test_tracing_keeps_aiohttp() -> None:
    import aiohttp

    assert LlmUpstream().lean
    assert not LlmUpstream(traces=[aiohttp.TraceConfig()]).lean


def both_clients(max_connections: int = 100) -> list[LlmUpstream]:
    """The lean client and aiohttp (tracing on): what one accepts, the other must."""
    import aiohttp

    return [LlmUpstream(max_connections=max_connections),
            LlmUpstream(max_connections=max_connections, traces=[aiohttp.TraceConfig()])]


@pytest.mark.parametrize(("url", "problem"), [
    ("http://user:s3cret@host:8000/v1?api-version=1", "has a query"),
    ("http://host:8000/v1?", "has a query"),
    ("http://user:s3cret@host:8000/v1#part", "has a fragment"),
    ("http:///v1", "has no host"),
    ("http://:8000/v1", "has no host"),
    ("http://user:s3cret@host:99999/v1", "unreadable host or port"),
    ("http://host:0/v1", "has port 0"),
    ("http://::1:8000/v1", "IPv6 address goes in brackets"),
    ("http://[::1]8000/v1", "after its IPv6 address"),
    ("http://h\u00e9te.example/v1", "not ASCII"),
    ("http://host/v1 beta", "space or control character"),
    ("ftp://user:s3cret@host/v1", "must be an http:// or https:// URL"),
])
def test_an_upstream_url_neither_client_can_use_is_refused_when_loaded(
        url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=r"llm\.models") as err:
        settings_from_mapping({"llm": {"models": [{"name": "m", "upstream": url}]}})
    assert problem in str(err.value)
    assert "s3cret" not in str(err.value)


def test_a_url_password_and_an_api_key_file_are_refused_together(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-upstream\n")
    with pytest.raises(ConfigurationError, match="user:password and api_key_file") as err:
        settings_from_mapping({"llm": {"models": [
            {"name": "m", "upstream": "http://user:s3cret@host/v1", "api_key_file": str(key)}]}})
    assert "s3cret" not in str(err.value)
    for url in ("http://host:8000/v1", "https://host/v1/", "http://[::1]:8000/openai/v1",
                "http://user:s3cret@host/v1"):  # a path prefix, IPv6, a URL's own password
        settings_from_mapping({"llm": {"models": [{"name": "m", "upstream": url}]}})


async def test_a_url_password_is_basic_authorization_on_both_clients(serve: Serve) -> None:
    raw = await serve(answer())
    m = LlmModel(name="m", upstream=f"http://us%40er:pa%3Ass@127.0.0.1:{raw.port}/v1")
    for client in both_clients():
        try:
            assert await post(client, m) == b'{"ok": true}'
        finally:
            await client.close()
    basic = "Basic " + base64.b64encode(b"us@er:pa:ss").decode()
    assert [r.headers.get("authorization") for r in raw.requests] == [basic, basic]


@contextlib.contextmanager
def never_accepting() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose accept queue is full: Linux
    drops a SYN to a full queue, so a connect there hangs until its side gives up."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(16):
            filler = stack.enter_context(socket.socket())
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break  # the queue is full
        else:
            pytest.skip("this TCP stack answers a connect to a full accept queue")
        yield port


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
async def test_an_upstream_that_never_accepts_is_a_connect_timeout(
        serve: Serve, monkeypatch: pytest.MonkeyPatch, lean: bool) -> None:
    monkeypatch.setattr("modelfence.llm.upstream.CONNECT_TIMEOUT_S", 0.3)
    ok = await serve(answer())
    # one connection: a place the timeout kept would starve the next call
    client = both_clients(max_connections=1)[0 if lean else 1]
    try:
        with never_accepting() as port:
            hung = LlmModel(name="m", upstream=f"http://127.0.0.1:{port}/v1", timeout_s=5)
            for call in (post, read_stream):
                started = time.monotonic()
                with pytest.raises(UpstreamTimeout) as err:
                    await call(client, hung)
                took = time.monotonic() - started
                assert str(err.value) == ("the upstream model server did not accept a "
                                          "connection within 0.3 s")
                assert err.value.status == 504 and 0.25 < took < 1.5, took
        started = time.monotonic()
        assert await post(client, model(ok, timeout_s=5)) == b'{"ok": true}'
        assert time.monotonic() - started < 1
        if lean:
            pool = client._lean_pool()
            assert not pool._slots.locked() and len(pool._open) == 1
    finally:
        await client.close()


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
async def test_an_ipv6_upstream_is_reached_with_a_bracketed_host(serve: Serve) -> None:
    raw = await serve(answer(), host="::1")
    m = LlmModel(name="m", upstream=raw.url(host="[::1]"))
    for client in both_clients():
        try:
            assert await post(client, m) == b'{"ok": true}'
            assert b"".join(await read_stream(client, m)) == b'{"ok": true}'
        finally:
            await client.close()
    assert [r.headers["host"] for r in raw.requests] == [f"[::1]:{raw.port}"] * 4
    assert [r.path for r in raw.requests] == ["/v1/chat/completions"] * 4
    assert target("http://[::1]/v1").host_header == "[::1]"
    assert target("https://[::1]:443/v1").host_header == "[::1]"
