"""OpenTelemetry traces of requests: a span per request, per guard phase and per upstream call.

Nothing here imports OpenTelemetry until `build_tracing` finds tracing enabled: a gateway
without it loads none of it and runs the plain guard chain (kernel/traced.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.tracing import TracingSettings
from ..extras import require

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from .otel import Tracing

#: The modules the 'otel' extra brings.
MODULES = ("opentelemetry.trace", "opentelemetry.sdk.trace",
           "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def build_tracing(settings: TracingSettings, *, exporter: SpanExporter | None = None
                  ) -> Tracing | None:
    """The gateway's tracing, or None when `settings` leave it off. `exporter` replaces the
    OTLP/HTTP one (tests: the SDK's in-memory exporter, spans handed over synchronously)."""
    if not settings.enabled:
        return None
    require("otel", "tracing", *MODULES)
    from .otel import Tracing

    return Tracing(settings, exporter=exporter)
