"""The server span of each call on the gRPC listener (`server.grpc_port`).

A grpc.aio server interceptor, installed only when tracing is on: each unary call runs inside
a SERVER span named by its method (`inference.GRPCInferenceService/ModelInfer`), so the guard
spans, the backend's and the upstream's are its children as on REST. A caller's
`traceparent` metadata is continued only with `honour_traceparent`. The complete phases run
after the answer, when the span has ended: the chain describes the call on the span as its
request phases end (`kernel/traced.py`), and a gRPC trace has no complete-phase spans.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_CARRIED = ("traceparent", "tracestate")
#: The span's `rpc.grpc.status_code` when the handler returned (an abort says its own).
_OK = grpc.StatusCode.OK.value[0]


class RpcSpans(grpc.aio.ServerInterceptor):
    """A SERVER span around each unary call's handler."""

    def __init__(self, tracer: Tracer, *, honour_traceparent: bool) -> None:
        self._tracer = tracer
        self._honour = honour_traceparent

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = str(details.method).lstrip("/")
        service, _, name = method.partition("/")
        parent = self._parent(details.invocation_metadata or ())
        tracer = self._tracer

        async def traced(request: Any, context: Any) -> Any:
            with tracer.start_as_current_span(
                    method, context=parent, kind=SpanKind.SERVER,
                    attributes={"rpc.system": "grpc", "rpc.service": service,
                                "rpc.method": name},
                    record_exception=False, set_status_on_exception=False) as span:
                try:
                    answer = await inner(request, context)
                except BaseException as exc:  # an abort (a refusal) or a failure
                    code = context.code()
                    if isinstance(code, grpc.StatusCode):
                        span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if not isinstance(code, grpc.StatusCode) or code in _SERVER_FAULTS:
                        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
                span.set_attribute("rpc.grpc.status_code", _OK)
                return answer

        return grpc.unary_unary_rpc_method_handler(
            traced, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _parent(self, metadata: Any) -> otel_context.Context:
        if not self._honour:
            return otel_context.Context()
        carrier = {str(k): str(v) for k, v in metadata if k in _CARRIED}
        return _PROPAGATOR.extract(carrier, context=otel_context.Context())


#: The gRPC codes that are the server's failure (OpenTelemetry's rule for server spans).
_SERVER_FAULTS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})
