"""The HTTP client to OpenAI-compatible upstreams: the lean HTTP/1.1 client (http1.py), or
aiohttp when tracing is on (`LlmUpstream.lean`).

Failures become `UpstreamError` (502) / `UpstreamTimeout` (504); an error status is
answered as on the OIP path (backends/upstream_status.py): a 4xx passes through with its
reason made public (never the hidden `upstream_model` or the upstream's address), a 429 is a
503 with the upstream's Retry-After, and a 3xx is a 502, never followed: a redirected request
would carry the upstream API key and the prompt somewhere unconfigured.
A stream is read as it arrives. One read to its end hands its connection back to the pool,
so that the next stream pays no new connect before its first token; closing the iterator
before the end (the client went away) closes the upstream connection instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import orjson

from ..backends.transport import (
    MAX_UPSTREAM_BODY,
    answer_timed_out,
    connect_timed_out,
    oversized,
    unreachable,
    upstream_errors,
)
from ..backends.upstream_status import upstream_failure
from ..errors import UpstreamError, UpstreamTimeout
from ..redaction import redact_url
from .http1 import BodyTooLarge, Connection, ConnectTimeout, Http1Error, Target, target
from .http1_pool import Http1Pool
from .settings import LlmModel

CONNECT_TIMEOUT_S = 2.0


class LlmUpstream:
    """One pool of connections shared by every LLM model; made inside the running loop."""

    def __init__(self, *, max_connections: int = 100,
                 watermark_secret: bytes | None = None, traces: Sequence[Any] = ()) -> None:
        self._max = max_connections
        self._traces = list(traces)  # aiohttp trace configs (tracing: the upstream spans)
        self._watermark_secret = watermark_secret  # local models' text watermark keys
        self._session: Any = None
        self._pool: Http1Pool | None = None
        self._targets: dict[str, Target] = {}  # parsed upstream URLs
        self.lean = not self._traces
        """The lean client (http1.py) unless tracing is on. Tracing's upstream span and the
        `traceparent` it sends come from aiohttp's trace hooks (tracing/upstream.py), which
        the lean client has none of; aiohttp's cost, about 0.2 ms of CPU a request, is what
        the lean client saves, and matters less where every request exports spans."""
        self._local: Any = None  # LocalBackend, made on the first `local:` call
        self._keys: dict[str, str | None] = {}  # upstream API keys, read once per model

    def _local_backend(self) -> Any:
        if self._local is None:
            from .local import LocalBackend

            self._local = LocalBackend(watermark_secret=self._watermark_secret)
        return self._local

    def _client(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max, keepalive_timeout=30),
                skip_auto_headers=("User-Agent",), trace_configs=self._traces or None,
            )
        return self._session

    def _lean_pool(self) -> Http1Pool:
        if self._pool is None:
            self._pool = Http1Pool(max_connections=self._max,
                                   connect_timeout_s=CONNECT_TIMEOUT_S)
        return self._pool

    def _target(self, model: LlmModel) -> Target:
        to = self._targets.get(model.upstream)
        if to is None:
            to = self._targets[model.upstream] = target(model.upstream)
        return to

    def _authorization(self, model: LlmModel) -> str | None:
        if model.name not in self._keys:
            self._keys[model.name] = model.api_key()
        key = self._keys[model.name]
        return f"Bearer {key}" if key else None

    def _headers(self, model: LlmModel) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        authorization = self._authorization(model)
        if authorization:
            headers["Authorization"] = authorization
        return headers

    def _timeout(self, model: LlmModel) -> Any:
        import aiohttp

        return aiohttp.ClientTimeout(total=model.timeout_s, sock_connect=CONNECT_TIMEOUT_S)

    async def post(self, model: LlmModel, path: str, body: bytes) -> bytes:
        """The body of a 2xx answer to a POST; errors raised as above."""
        if model.local_path is not None:
            return bytes(await self._local_backend().post(model, path, body))
        return await self._exchange("POST", model, path, body)

    async def _exchange(self, method: str, model: LlmModel, path: str, body: bytes | None
                        ) -> bytes:
        if self.lean and method == "POST" and body is not None:
            try:
                status, answer, retry_after = await self._lean_pool().post(
                    self._target(model), path, body, self._authorization(model),
                    model.timeout_s, MAX_UPSTREAM_BODY)
            except (Http1Error, OSError) as exc:
                raise _lean_error(exc, model) from None
            _check(status, answer, model, path, retry_after)
            return answer
        with upstream_errors(CONNECT_TIMEOUT_S, model.timeout_s):
            async with self._client().request(
                    method, model.upstream + path, data=body, headers=self._headers(model),
                    timeout=self._timeout(model), allow_redirects=False) as resp:
                data = bytearray()
                async for chunk in resp.content.iter_any():
                    data += chunk
                    if len(data) > MAX_UPSTREAM_BODY:
                        raise oversized()
                _check(resp.status, bytes(data), model, path, resp.headers.get("Retry-After"))
                return bytes(data)

    async def stream(self, model: LlmModel, path: str, body: bytes) -> AsyncIterator[bytes]:
        """Open a streaming POST; errors before the first byte raise from this call.

        The returned iterator yields raw chunks as they arrive; closing it before the end
        closes the upstream connection, which is how a client's disconnect cancels the
        generation.
        """
        if model.local_path is not None:
            chunks: AsyncIterator[bytes] = await self._local_backend().stream(model, path, body)
            return chunks
        if self.lean:
            return await self._lean_stream(model, path, body)
        ctx = self._client().post(model.upstream + path, data=body,
                                  headers=self._headers(model), timeout=self._timeout(model),
                                  allow_redirects=False)
        with upstream_errors(CONNECT_TIMEOUT_S, model.timeout_s):
            resp = await ctx.__aenter__()
        if resp.status >= 300:
            try:
                data = await resp.content.read(64 * 1024)
            finally:
                await ctx.__aexit__(None, None, None)
            _check(resp.status, data, model, path, resp.headers.get("Retry-After"))
        return _chunks(ctx, resp, model)

    async def _lean_stream(self, model: LlmModel, path: str, body: bytes
                           ) -> AsyncIterator[bytes]:
        pool = self._lean_pool()
        try:
            conn = await pool.send(self._target(model), path, body, self._authorization(model),
                                   model.timeout_s, stream=True)
        except (Http1Error, OSError) as exc:
            raise _lean_error(exc, model) from None
        if conn.status >= 300:
            data = b""
            try:
                while len(data) < 64 * 1024 and (chunk := await conn.chunk()) is not None:
                    data += chunk
            except (Http1Error, OSError):
                pass  # the status says enough
            finally:
                pool.release(conn)
            _check(conn.status, data[:64 * 1024], model, path, conn.retry_after)
        return _LeanChunks(pool, conn, model)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)


async def _chunks(ctx: Any, resp: Any, model: LlmModel) -> AsyncIterator[bytes]:
    import aiohttp

    ended = False
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
        ended = True
    except TimeoutError:
        raise _stream_timed_out(model.timeout_s) from None
    except aiohttp.ClientError:
        raise _stream_broken() from None
    finally:
        if ended:
            resp.release()  # read to its end: the connection goes back to the pool
        else:
            resp.close()  # drop the connection: the upstream sees the disconnect and stops
        await ctx.__aexit__(None, None, None)


class _LeanChunks(AsyncGenerator[bytes, None]):
    """The lean client's `_chunks`: read to its end, the connection goes back to the pool;
    closed early, it is closed, and the upstream sees the disconnect. Not a generator
    function: closing one that never started runs none of its code, and the relay closes
    an upstream it never read when the client leaves first (sse.py). One dropped unclosed
    is closed when collected."""

    def __init__(self, pool: Http1Pool, conn: Connection, model: LlmModel) -> None:
        self._pool: Http1Pool | None = pool
        self._conn = conn
        self._timeout_s = model.timeout_s

    async def __anext__(self) -> bytes:
        if self._pool is None:
            raise StopAsyncIteration
        try:
            chunk = await self._conn.chunk()
        except TimeoutError:
            self._end()
            raise _stream_timed_out(self._timeout_s) from None
        except (Http1Error, OSError):
            self._end()
            raise _stream_broken() from None
        except BaseException:
            self._end()
            raise
        if chunk is None:
            self._end()
            raise StopAsyncIteration
        return chunk

    async def asend(self, value: None) -> bytes:
        return await self.__anext__()

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> bytes:
        self._end()
        raise typ if val is None else val

    async def aclose(self) -> None:
        self._end()

    def _end(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release(self._conn)

    def __del__(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed, and its sockets
                pool.discard(self._conn)


def _stream_timed_out(timeout_s: float) -> UpstreamTimeout:
    return UpstreamTimeout(f"the upstream model server did not finish within {timeout_s:g} s")


def _stream_broken() -> UpstreamError:
    return UpstreamError("the upstream model server broke off the stream")


def _lean_error(exc: BaseException, model: LlmModel) -> UpstreamError:
    """The lean client's failures as `upstream_errors` says aiohttp's."""
    if isinstance(exc, ConnectTimeout):
        return connect_timed_out(CONNECT_TIMEOUT_S)
    if isinstance(exc, TimeoutError):
        return answer_timed_out(model.timeout_s)
    if isinstance(exc, BodyTooLarge):
        return oversized()
    return unreachable()


def _check(status: int, data: bytes, model: LlmModel, path: str,
           retry_after: str | None) -> None:
    """Raise for a non-2xx answer: the details in the log, a public message to the client."""
    if status >= 300:
        raise upstream_failure(status, data, model=model.name,
                               upstream_model=model.upstream_model or model.name,
                               where=redact_url(model.upstream + path),
                               retry_after=retry_after)


def loads_object(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("the upstream model server answered with invalid JSON") from None
    if not isinstance(doc, dict):
        raise UpstreamError("the upstream model server answered with a non-object")
    return doc
