"""A client span per upstream HTTP request, with the W3C `traceparent` sent upstream.

An aiohttp trace config, given to the upstream sessions (OIP upstreams and OpenAI-compatible
ones) only when tracing is on: its hooks run inside the request's task, under the guard
chain's backend span, so the client span is that span's child and each try is one span (the
transport's one retry on a new connection is a second). The traceparent names the client
span, so the upstream's own spans join the same trace. The span records the method, the
upstream's host and port and the status, not the URL's credentials or query, nor any header.
A streamed answer's span ends when its headers arrive.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .chain import STATUS

_PROPAGATOR = TraceContextTextMapPropagator()


def client_trace(tracer: Tracer) -> aiohttp.TraceConfig:
    """The trace config whose hooks open, propagate and end the upstream span."""

    async def start(session: Any, ctx: SimpleNamespace,
                    params: aiohttp.TraceRequestStartParams) -> None:
        url = params.url
        span = tracer.start_span(
            f"upstream {params.method}", kind=SpanKind.CLIENT,
            attributes={"http.request.method": params.method, "server.address": url.host or "",
                        "server.port": url.port or 0, "url.path": url.path})
        ctx.span = span
        _PROPAGATOR.inject(params.headers, context=trace.set_span_in_context(span))

    async def end(session: Any, ctx: SimpleNamespace,
                  params: aiohttp.TraceRequestEndParams) -> None:
        span = getattr(ctx, "span", None)
        if span is not None:
            status = params.response.status
            span.set_attribute(STATUS, status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()

    async def failed(session: Any, ctx: SimpleNamespace,
                     params: aiohttp.TraceRequestExceptionParams) -> None:
        span = getattr(ctx, "span", None)
        if span is not None:
            span.set_attribute("error.type", type(params.exception).__name__)
            span.set_status(Status(StatusCode.ERROR, type(params.exception).__name__))
            span.end()

    config = aiohttp.TraceConfig()
    config.on_request_start.append(start)
    config.on_request_end.append(end)
    config.on_request_exception.append(failed)
    return config
