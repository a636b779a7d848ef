"""`tracing:` — OpenTelemetry spans of each request, exported over OTLP/HTTP.

Off by default: then nothing of OpenTelemetry is imported and the request path is unchanged.
Spans carry the route, model, status, decision, refusal reason and shaping band, never a
credential, a prompt or a tensor. An incoming W3C `traceparent` is continued only where the
operator trusts the callers to set it (`honour_traceparent`); otherwise each request starts
a trace of its own, so a caller cannot join, or force sampling of, someone else's trace.
"""

from __future__ import annotations

from pydantic import Field

from .base import Strict


class TracingSettings(Strict):
    enabled: bool = Field(False, description="record spans (needs the 'otel' extra)")
    endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces", pattern=r"^https?://",
        description="the OTLP/HTTP traces endpoint of a collector")
    service_name: str = Field("modelfence", min_length=1, max_length=200,
                              description="the `service.name` resource of every span")
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0,
                                description="share of new traces recorded (by trace id)")
    honour_traceparent: bool = Field(
        False, description="continue a caller's W3C traceparent (and its sampling choice) "
        "instead of starting a new trace; for callers inside the operator's own systems")
    guard_spans: bool = Field(
        True, description="a span per guard phase; off: only the request's, the backend "
        "call's and the upstream request's (a span costs CPU: see the tracing docs)")
    export_timeout_s: float = Field(5.0, gt=0, le=60,
                                    description="seconds one export to the collector may take")
