"""X-Forwarded-For is believed only from trusted proxies, and never forged by a client."""

from __future__ import annotations

from typing import Any

import pytest

from modelfence.gateway.proxies import ProxyHeaders


async def client_seen(peer: str, xff: str | None, trusted: list[str]) -> str:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["client"] = scope["client"][0]

    headers = [(b"x-forwarded-for", xff.encode())] if xff is not None else []
    await ProxyHeaders(app, trusted)({"type": "http", "client": (peer, 5000),
                                      "headers": headers}, None, None)
    return str(seen["client"])


@pytest.mark.parametrize(("peer", "xff", "expected"), [
    ("10.0.0.5", "203.0.113.7", "203.0.113.7"),              # the balancer forwarded a client
    ("198.51.100.9", "203.0.113.7", "198.51.100.9"),         # not a trusted peer: header ignored
    ("10.0.0.5", "1.1.1.1, 203.0.113.7", "203.0.113.7"),     # client-sent first hop is ignored
    ("10.0.0.5", "203.0.113.7, 10.0.0.9", "203.0.113.7"),    # two trusted hops
    ("10.0.0.5", None, "10.0.0.5"),
    ("10.0.0.5", "not-an-ip", "10.0.0.5"),
    ("10.0.0.5", "10.0.0.7", "10.0.0.5"),                    # only trusted hops: keep the peer
    ("10.0.0.5", "2001:db8::1", "2001:db8::1"),
])
async def test_client_address(peer: str, xff: str | None, expected: str) -> None:
    assert await client_seen(peer, xff, ["10.0.0.0/8"]) == expected
