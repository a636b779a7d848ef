"""The guard chain's spans: one per guard phase and one around the backend call, children
of the request's span; the finished call described on the request's span.

What a span says is chosen here, once: the model, route, status, decision, refusal reason,
shaping band and risk. Never the caller's credential, headers, prompt or tensors: a span
goes to a collector that more people read than the audit log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

from ..errors import RequestError
from ..kernel.call import Call

#: Attribute names (OpenTelemetry's where one exists, else under `modelfence.`).
MODEL = "modelfence.model"
ACTION = "modelfence.action"
DECISION = "modelfence.decision"
REASON = "modelfence.refusal.reason"
REFUSAL_STATUS = "modelfence.refusal.status"
BAND = "modelfence.shaping.band"
RISK = "modelfence.risk"
REQUEST_ID = "modelfence.request_id"
GUARD = "modelfence.guard"
PHASE = "modelfence.phase"
STATUS = "http.response.status_code"


class OtelChainSpans:
    """`kernel.traced.ChainSpans` on an OpenTelemetry tracer. Without `guard_spans`, only the
    backend call has a span (the upstream request's parent), not each guard's phases."""

    def __init__(self, tracer: Tracer, *, guard_spans: bool = True) -> None:
        self._tracer = tracer
        self._guard_spans = guard_spans
        self._skip = nullcontext()

    def active(self) -> bool:
        # a request sampled out records nothing: its guards run untraced, while the upstream
        # request still carries its (unsampled) traceparent
        return trace.get_current_span().is_recording()

    def phase(self, guard: str, phase: str) -> AbstractContextManager[object]:
        if self._guard_spans or phase == "call":
            return self._phase(guard, phase)
        return self._skip

    @contextmanager
    def _phase(self, guard: str, phase: str) -> Iterator[object]:
        # exceptions are described here, by kind: an unexpected one's text may name a store's
        # address or a value, which the span must not carry
        with self._tracer.start_as_current_span(
                f"{guard} {phase}", attributes={GUARD: guard, PHASE: phase},
                record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except RequestError as exc:
                refused(span, exc)
                raise
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def finish(self, call: Call) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(call_attributes(call))


def refused(span: Any, exc: RequestError) -> None:
    """A refusal on `span`: its status and public reason (a 5xx is the gateway's failure)."""
    span.set_attribute(REASON, exc.message)
    span.set_attribute(REFUSAL_STATUS, exc.status)
    if exc.status >= 500:
        span.set_status(Status(StatusCode.ERROR, exc.reason))


def call_attributes(call: Call) -> dict[str, Any]:
    """What the request's span says about a finished call (no credential, no inputs)."""
    out: dict[str, Any] = {ACTION: call.action, REQUEST_ID: call.request_id,
                           RISK: float(call.risk)}
    if call.model_name is not None:
        out[MODEL] = call.model_name
    if call.decision:
        out[DECISION] = call.decision
    if call.status:
        out[STATUS] = call.status
    if call.shaping_band:
        out[BAND] = call.shaping_band
    if call.error is not None:
        out[REASON] = call.error.message
        out[REFUSAL_STATUS] = call.error.status
    return out
