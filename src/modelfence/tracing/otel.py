"""The gateway's OpenTelemetry tracer: its own provider (never the process-global one, so two
apps in one process, or a test, never share spans), sampling, and the OTLP/HTTP export."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from .. import __version__
from ..config.tracing import TracingSettings
from ..kernel.traced import ChainSpans
from .chain import OtelChainSpans
from .server import RequestSpans
from .upstream import client_trace

INSTRUMENTATION = "modelfence"


class Tracing:
    """Made once per app from `tracing:`; `shutdown` (at the app's end) sends what is left."""

    def __init__(self, settings: TracingSettings, *, exporter: SpanExporter | None = None
                 ) -> None:
        self.settings = settings
        processor: SpanProcessor
        if exporter is None:
            processor = BatchSpanProcessor(OTLPSpanExporter(
                endpoint=settings.endpoint, timeout=settings.export_timeout_s))
        else:
            processor = SimpleSpanProcessor(exporter)
        # a caller's sampling choice is kept only where its traceparent is (honour_traceparent)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name,
                                      "service.version": __version__}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(INSTRUMENTATION, __version__)

    def chain_spans(self) -> ChainSpans:
        """Spans for the guard chains (`Stages(spans=...)`)."""
        return OtelChainSpans(self.tracer, guard_spans=self.settings.guard_spans)

    def client_traces(self) -> list[Any]:
        """aiohttp trace configs: a client span per upstream request, its traceparent sent."""
        return [client_trace(self.tracer)]

    def middleware(self, routes: Sequence[BaseRoute]) -> Middleware:
        """The server span of each HTTP request, named by the route of `routes` it matches."""
        return Middleware(RequestSpans, tracer=self.tracer, routes=routes,
                          honour_traceparent=self.settings.honour_traceparent)

    def rpc_interceptor(self) -> Any:
        """The gRPC listener's server interceptor: a server span per call (needs grpc)."""
        from .rpc import RpcSpans

        return RpcSpans(self.tracer, honour_traceparent=self.settings.honour_traceparent)

    def shutdown(self) -> None:
        """Export the spans still queued and stop (bounded by the export timeout)."""
        self.provider.shutdown()
