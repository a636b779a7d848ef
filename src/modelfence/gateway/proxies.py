"""The caller's real address behind trusted load balancers (X-Forwarded-For).

Policy (`context.source_ip`, grant networks) and the audit log need the client's
address, not the balancer's. Only hops listed in `server.trusted_proxies` are believed:
the client is the right-most address in X-Forwarded-For that is not a trusted proxy,
so a client cannot forge its address by sending the header itself.
"""

from __future__ import annotations

import ipaddress
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaders:
    """ASGI middleware rewriting `scope["client"]` when the peer is a trusted proxy."""

    def __init__(self, app: Any, trusted: list[str]) -> None:
        self.app = app
        self.trusted: list[Network] = [ipaddress.ip_network(n, strict=False) for n in trusted]

    def _is_trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("client"):
            peer = scope["client"][0]
            if self._is_trusted(peer):
                client = self.client_from(scope, peer)
                if client != peer:
                    scope = {**scope, "client": (client, 0)}
        await self.app(scope, receive, send)

    def client_from(self, scope: dict[str, Any], peer: str) -> str:
        hops: list[str] = []
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                hops += [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # a malformed hop: keep what we know for sure
        return peer
