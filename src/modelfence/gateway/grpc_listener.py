"""The gRPC listener: the OIP gRPC service on `server.grpc_port`, started and stopped with the app.

Each worker serves it from inside its own event loop, as the admin listener does, so a gRPC
call sees the same objects as a REST one: the key cache, the in-flight caps, the monitor's
and the watermark's state, the audit sink. grpc binds its port with SO_REUSEPORT, so
`workers > 1` share it as they share the public port (the server checks first that no
other process holds it: cli/main.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..extras import require

if TYPE_CHECKING:
    from .grpc_service import GrpcInference

log = logging.getLogger("modelfence.grpc")
_STOP_GRACE_S = 5.0


def require_grpc() -> None:
    """A configured gRPC port needs the `grpc` extra: say so at start, not on a request."""
    require("grpc", "server.grpc_port (the gRPC service)", "grpc", "google.protobuf")


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcListener:
    """Serves `service` on host:port while the app runs; messages up to `max_message_bytes`
    (larger ones grpc refuses itself with RESOURCE_EXHAUSTED, before any guard runs)."""

    def __init__(self, host: str, port: int, service: GrpcInference, *,
                 max_message_bytes: int, interceptors: Sequence[Any] = ()) -> None:
        self.address = grpc_address(host, port)
        self._service = service
        self._max = max_message_bytes
        self._interceptors = list(interceptors)  # tracing's server spans, when it is on
        self._server: Any = None

    async def start(self) -> None:
        import grpc

        server = grpc.aio.server(options=[("grpc.max_receive_message_length", self._max),
                                          ("grpc.so_reuseport", 1)],
                                 interceptors=self._interceptors or None)
        server.add_generic_rpc_handlers((self._service.handler(),))
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise ConfigurationError(f"server.grpc_port: cannot listen on {self.address}: "
                                     f"{exc}") from None
        await server.start()
        self._server = server
        log.info("OIP gRPC service on %s (pid %d)", self.address, os.getpid())

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(_STOP_GRACE_S)
            self._server = None
        await self._service.drain()  # the audit records of the last calls
