"""Backends chosen by the `backend.type` of each model, through one factory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..config import LocalBackend, ModelSettings
from ..extras import require
from .base import Backend, ModelEntry, ModelMetadata
from .local import OnnxClassifier, PickleClassifier, SkopsClassifier
from .oip_upstream import OipUpstream
from .transport import AiohttpTransport, Transport

__all__ = ["Backend", "ModelEntry", "ModelMetadata", "Transport", "backend_from_settings"]


def backend_from_settings(settings: ModelSettings, *, traces: Sequence[Any] = ()) -> Backend:
    """The model's backend; `traces` are aiohttp trace configs for its upstream requests
    (tracing's client spans), none unless tracing is on."""
    cfg = settings.backend
    if isinstance(cfg, LocalBackend):
        local: dict[str, Callable[[ModelSettings], Backend]] = {
            "skops": SkopsClassifier, "onnx": OnnxClassifier, "pickle": PickleClassifier}
        return local[cfg.type](settings)
    if cfg.url.startswith("grpc://"):
        require("grpc", f"model {settings.name}: a grpc:// upstream", "grpc", "google.protobuf")
        from .oip_grpc import GrpcUpstream

        return GrpcUpstream(settings)
    transport = AiohttpTransport(max_connections=cfg.max_connections,
                                 connect_timeout_s=cfg.connect_timeout_s,
                                 retry_closed=cfg.retry_closed_connection, traces=traces)
    return OipUpstream(settings, transport)
