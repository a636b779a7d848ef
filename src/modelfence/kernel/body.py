"""Reading a request body without ever buffering more than its limit.

`read_decoded` also undoes a request `Content-Encoding` (gzip or deflate, as tritonclient's
`request_compression_algorithm` sends), inflating chunk by chunk as the body arrives and
stopping at the same limit: a small body that would inflate past it (a decompression bomb)
is refused with 413 before more than the limit is ever held.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .call import RequestFacts

#: zlib window bits for each supported encoding; deflate may come with or without its
#: zlib wrapper (RFC 9110 says with; some clients send raw deflate), told by its first bytes
_GZIP_BITS = 16 + zlib.MAX_WBITS
_ZLIB_BITS = zlib.MAX_WBITS
_RAW_DEFLATE_BITS = -zlib.MAX_WBITS
_ENCODINGS = ("gzip", "x-gzip", "deflate")
_EMPTY = "request body is empty; send a JSON object with 'inputs'"


async def read_bounded(request: RequestFacts, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit`."""
    chunks = [chunk async for chunk in _chunks(request, limit)]
    body = b"".join(chunks)
    if not body:
        raise BadRequest(_EMPTY)
    return body


async def read_decoded(request: RequestFacts, limit: int) -> bytes:
    """The whole body with its Content-Encoding undone; neither the body as sent nor the
    body as decoded may exceed `limit` (413), an unknown encoding is 415."""
    encoding = content_encoding(request.headers.get("content-encoding"))
    if encoding is None:
        return await read_bounded(request, limit)
    inflater = Inflater(encoding, limit)
    async for chunk in _chunks(request, limit):
        inflater.feed(chunk)
    body = inflater.finish()
    if not body:
        raise BadRequest(_EMPTY)
    return body


async def _chunks(request: RequestFacts, limit: int) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("content-length header is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body over the {limit} byte limit")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over the {limit} byte limit")
        if chunk:
            yield chunk


def content_encoding(header: str | None) -> str | None:
    """The one encoding to undo ("gzip" or "deflate"), or None for an identity body."""
    if header is None:
        return None
    codings = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise UnsupportedMediaType(
            f"Content-Encoding {header[:64]!r}: only one encoding is supported "
            "(gzip or deflate)")
    if codings[0] not in _ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {codings[0][:32]!r} is not supported; send the body "
            "uncompressed or with Content-Encoding gzip or deflate")
    return "deflate" if codings[0] == "deflate" else "gzip"


class Inflater:
    """Inflates a gzip or deflate body fed in pieces, never holding more than `limit`
    inflated bytes: zlib is asked for at most one byte past what is left, so a bomb stops
    after `limit` bytes whatever its ratio. Gzip may hold several members (RFC 1952)."""

    def __init__(self, encoding: str, limit: int) -> None:
        self._encoding = encoding
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._pending = b""  # deflate's first byte, until its second tells the wrapping
        self._inflater: zlib._Decompress | None = (
            zlib.decompressobj(_GZIP_BITS) if encoding == "gzip" else None)

    def feed(self, data: bytes) -> None:
        if self._inflater is None:  # deflate: wait for two bytes to tell zlib from raw
            data = self._pending + data
            if len(data) < 2:
                self._pending = data
                return
            self._pending = b""
            self._inflater = zlib.decompressobj(
                _ZLIB_BITS if _zlib_wrapped(data) else _RAW_DEFLATE_BITS)
        while data:
            if self._inflater.eof:
                data = self._next_member(data)
            try:
                out = self._inflater.decompress(data, self._limit - self._size + 1)
            except zlib.error as exc:
                raise BadRequest(f"request body is not valid {self._encoding} data "
                                 f"({_zlib_reason(exc)})") from None
            self._size += len(out)
            if self._size > self._limit:
                raise PayloadTooLarge(
                    f"request body (Content-Encoding: {self._encoding}) inflates to more "
                    f"than the {self._limit} byte limit", reason="inflated_too_large")
            self._parts.append(out)
            data = self._inflater.unused_data if self._inflater.eof else b""

    def _next_member(self, data: bytes) -> bytes:
        if self._encoding != "gzip":
            raise BadRequest("request body: data after the end of the deflate stream")
        self._inflater = zlib.decompressobj(_GZIP_BITS)
        return data

    def finish(self) -> bytes:
        """The inflated body; refuses a stream that stops before its end."""
        if self._inflater is None or not self._inflater.eof:
            raise BadRequest(f"request body: the {self._encoding} data is truncated (it ends "
                             "before the end of its compressed stream)")
        return b"".join(self._parts)


def _zlib_wrapped(head: bytes) -> bool:
    """Whether deflate data starts with a zlib header (RFC 1950) rather than raw deflate."""
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


def _zlib_reason(exc: zlib.error) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text
