"""Where a request's risk comes from: a `RiskSource`, read by one guard for every protocol.

The classifier monitor's service and the LLM risk book both answer `peek` with a caller's
effective risk (the higher of its principal's and its tenant's, held by their episodes);
`RiskGuard.on_request` puts it on `call.risk` before the policy, rate-limit and output
band choices read it. Each protocol's guard subclasses it and adds what it observes after
the call (`on_complete`). `PinGuard` follows it on every protocol: an operator's pin
(the console) is a floor under the risk it set and under the output band chosen later.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from ..kernel.call import Call
from ..kernel.chain import C_contra, Guard


class RiskSource(Protocol):
    """A book of callers' risk per model."""

    def watches(self, model: str) -> bool:
        """Whether callers of `model` are scored here."""
        ...

    def peek(self, model: str, principal: str, tenant: str | None) -> float:
        """The caller's effective risk now: the higher of its own and its tenant's; a
        dictionary lookup or two, for the request path."""
        ...


class RiskGuard(Guard[C_contra]):
    """Sets `call.risk` from its source, and notes it on the call's trail when above 0.

    Generic over the Call type: each protocol's subclass names its own
    (`MonitorGuard(RiskGuard[OipCall])`, `LlmRiskGuard(RiskGuard[LlmCall])`)."""

    name: ClassVar[str] = "risk"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model"})
    provides: ClassVar[frozenset[str]] = frozenset({"risk"})

    def __init__(self, source: RiskSource) -> None:
        self.source = source

    async def on_request(self, call: C_contra) -> None:
        assert call.principal is not None and call.model is not None
        if not self.source.watches(call.model.name):
            return
        call.risk = self.source.peek(call.model.name, call.principal.id,
                                     call.principal.tenant or None)
        if call.risk > 0.0:
            call.note(self.name, "note", f"risk {call.risk:.2f}")


class PinFloors(Protocol):
    """Operators' pins (`monitor.pins.PinBook`): a risk floor per model and principal."""

    def floor(self, model: str, principal: str) -> float:
        """The floor a live pin puts under the principal's risk (0 without one): one
        dictionary lookup, none while nothing is pinned."""
        ...


class PinGuard(Guard[Call]):
    """An operator's pin on every protocol: `call.band_floor` (no output band or control
    band below the pinned one, whatever a policy's ``@shaping`` pins) and `call.risk` raised
    to it, so policy and rate limits see the caller as the operator does. It only ever
    raises; it runs after the protocol's risk guard (which would overwrite the risk)."""

    name: ClassVar[str] = "pin"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model"})
    reads: ClassVar[frozenset[str]] = frozenset({"risk"})
    provides: ClassVar[frozenset[str]] = frozenset({"band_floor", "risk"})

    def __init__(self, pins: PinFloors) -> None:
        self.pins = pins

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None and call.model is not None
        floor = self.pins.floor(call.model.name, call.principal.id)
        if floor > 0.0:
            call.band_floor = floor
            if floor > call.risk:
                call.risk = floor
                call.note(self.name, "note", f"pinned: risk {floor:.2f}")
