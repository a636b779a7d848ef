"""The server span of each HTTP request: outermost in the app, so that the guard spans, the
upstream call and the complete phases (run after the answer is sent) are its children.

A caller's W3C `traceparent` is continued only when `honour_traceparent` says so; otherwise
each request is a new trace. The span is named `METHOD route` by the route template
(`POST /v2/models/{model_name}/infer`), never by the raw path, so a collector's span names
stay few; it records no header, so no credential.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .chain import STATUS

_PROPAGATOR = TraceContextTextMapPropagator()
_CARRIED = (b"traceparent", b"tracestate")


class RequestSpans:
    """ASGI middleware: one SERVER span per HTTP request."""

    def __init__(self, app: ASGIApp, *, tracer: Tracer, routes: Sequence[BaseRoute],
                 honour_traceparent: bool) -> None:
        self.app = app
        self._tracer = tracer
        self._routes = [(r.path_regex, r.path) for r in routes if isinstance(r, Route)]
        self._honour = honour_traceparent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        route = self._route(scope["path"])
        attributes: dict[str, Any] = {"http.request.method": method,
                                      "url.path": scope["path"], "url.scheme": scope["scheme"]}
        if route is not None:
            attributes["http.route"] = route
        with self._tracer.start_as_current_span(
                f"{method} {route}" if route else method, context=self._parent(scope),
                kind=SpanKind.SERVER, attributes=attributes,
                record_exception=False, set_status_on_exception=False) as span:

            async def send_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute(STATUS, status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def _route(self, path: str) -> str | None:
        for regex, template in self._routes:
            if regex.match(path):
                return template
        return None

    def _parent(self, scope: Scope) -> otel_context.Context:
        """The caller's trace context where it is honoured, else an empty one (a new trace)."""
        if not self._honour:
            return otel_context.Context()
        carrier = {k.decode("latin-1"): v.decode("latin-1")
                   for k, v in scope["headers"] if k in _CARRIED}
        return _PROPAGATOR.extract(carrier, context=otel_context.Context())
