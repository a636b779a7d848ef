"""A guard chain that records a span per guard phase and one around the backend call.

Chosen when the chain is built (`Stages.chain` with `spans`), so that a gateway without
tracing runs the plain `GuardChain` and pays nothing per request, not even a check. The
spans themselves come through the small `ChainSpans` interface: the kernel imports nothing
of OpenTelemetry (the `tracing` package implements it).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..errors import RequestError
from .call import Call
from .chain import C, Guard, GuardChain, Terminal, log


class ChainSpans(Protocol):
    """Spans for one chain's phases, children of the request's span."""

    def active(self) -> bool:
        """Whether a recorded request span is open here; else the call runs untraced: a
        request sampled out records nothing, and a call no request span covers (a gRPC
        call) would start a trace per guard."""

    def phase(self, guard: str, phase: str) -> AbstractContextManager[object]:
        """A span around one guard's phase (`request`, `response`, `complete`) or the
        backend's (`guard` "backend", `phase` "call"); a `RequestError` leaving it is its
        refusal."""

    def finish(self, call: Call) -> None:
        """Describe the call on the request's span (model, status, decision): when its
        request and response phases end (a gRPC call's span ends before its complete
        phases run), and again once it is complete."""


class TracedGuardChain(GuardChain[C]):
    """`GuardChain` with spans; the order, checks and outcomes are the plain chain's."""

    def __init__(self, call_type: type[C], guards: Sequence[Guard[C]], *, spans: ChainSpans,
                 terminal_provides: frozenset[str] | None = None) -> None:
        super().__init__(call_type, guards, terminal_provides=terminal_provides)
        self.spans = spans
        self._request_phases = [(g, g.name) for g in self._request]
        self._response_phases = [(g, g.name) for g in self._response]

    async def run(self, call: C, terminal: Terminal[C]) -> None:
        spans = self.spans
        if not spans.active():
            return await super().run(call, terminal)
        try:
            for guard, name in self._request_phases:
                with spans.phase(name, "request"):
                    await guard.on_request(call)
            with spans.phase("backend", "call"):
                await terminal(call)
            for guard, name in self._response_phases:
                with spans.phase(name, "response"):
                    await guard.on_response(call)
        except RequestError as exc:
            call.error = exc
            raise
        finally:
            spans.finish(call)

    async def complete(self, call: C) -> None:
        spans = self.spans
        if not spans.active():
            return await super().complete(call)
        for guard in self._complete:
            with spans.phase(guard.name, "complete"):
                try:
                    await guard.on_complete(call)
                except Exception:
                    log.exception("complete phase of guard %r failed", guard.name)
        spans.finish(call)


def traced_chain(call_type: type[C], guards: Sequence[Guard[Any]], spans: ChainSpans | None,
                 terminal_provides: frozenset[str] | None) -> GuardChain[C]:
    """The plain chain without `spans`, the traced one with them."""
    if spans is None:
        return GuardChain(call_type, guards, terminal_provides=terminal_provides)
    return TracedGuardChain(call_type, guards, spans=spans, terminal_provides=terminal_provides)
