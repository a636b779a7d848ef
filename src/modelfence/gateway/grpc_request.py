"""A gRPC call's request as the guards read any request (kernel.call.RequestFacts).

Its metadata are the headers (`authorization: Bearer <key>`, `x-modelfence-purpose`), the
peer's address is the client, and the serialized message is the body's one chunk: the
identity, policy and body guards read it exactly as they read an HTTP request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class GrpcPeer:
    host: str


class GrpcRequest:
    """One gRPC call's metadata, peer and message bytes."""

    __slots__ = ("_body", "client", "headers")

    def __init__(self, metadata: Iterable[tuple[str, Any]] | None, peer: str, body: bytes
                 ) -> None:
        self.headers = metadata_headers(metadata)
        self.client = peer_address(peer)
        self._body = body

    async def stream(self) -> AsyncIterator[bytes]:
        yield self._body


def metadata_headers(metadata: Iterable[tuple[str, Any]] | None) -> Mapping[str, str]:
    """Text metadata by lowercase key, the first of repeated keys (as an HTTP header's
    first value is read); binary (`-bin`) entries are left out."""
    headers: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            headers.setdefault(key.lower(), value)
    return headers


def peer_address(peer: str) -> GrpcPeer | None:
    """The host of grpc's peer string: `ipv4:10.0.0.1:5000`, `ipv6:%5B::1%5D:5000`; None
    for another transport (a unix socket), whose callers have no network address."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = unquote(rest).rpartition(":")[0]
    return GrpcPeer(host.removeprefix("[").removesuffix("]"))
