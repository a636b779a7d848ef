"""Reading a request body without ever buffering more than its limit."""

from __future__ import annotations

from starlette.requests import Request

from ..errors import BadRequest, PayloadTooLarge


async def read_bounded(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("content-length header is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over the {limit} byte limit")
        chunks.append(chunk)
    if size == 0:
        raise BadRequest("request body is empty; send a JSON object with 'inputs'")
    return b"".join(chunks)
