"""The monitor's place in the guard chain: risk in before policy, observations out after.

`on_request` sets `call.risk` from the caller's (or its tenant's) current score, before the
policy and rate-limit guards read it, so `context.risk` in Cedar and the risk-weighted rate
limits act on it. `on_complete` hands the answered rows and the model's probabilities
(before output shaping: the monitor judges what the model said, not what the caller saw)
to the service's queue; nothing there runs on the request's time in the common case.
"""

from __future__ import annotations

from typing import ClassVar

from ..backends.call import OipCall
from ..kernel.chain import Guard
from .service import MonitorService, Subject, rows_of


class MonitorGuard(Guard[OipCall]):
    name: ClassVar[str] = "monitor"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model"})
    provides: ClassVar[frozenset[str]] = frozenset({"risk"})

    def __init__(self, service: MonitorService) -> None:
        self._service = service

    @staticmethod
    def _subject(call: OipCall) -> Subject:
        assert call.principal is not None
        return Subject(call.principal.id, call.principal.tenant or None)

    async def on_request(self, call: OipCall) -> None:
        assert call.model is not None
        if not self._service.watches(call.model.name):
            return
        call.risk = self._service.peek(call.model.name, self._subject(call))
        if call.risk > 0.0:
            call.note(self.name, "note", f"risk {call.risk:.2f}")

    async def on_complete(self, call: OipCall) -> None:
        if (call.status != 200 or call.model is None or call.principal is None
                or call.inputs is None or call.outputs is None
                or not self._service.watches(call.model.name)):
            return
        proba = call.unshaped_proba
        if proba is None:
            tensor = call.outputs.output("probabilities")
            if tensor is None:
                return
            proba = tensor.data
        features = rows_of(call.inputs.inputs[0].data)
        if len(features) != len(proba):
            return
        self._service.submit(call.model.name, self._subject(call), features,
                             proba.reshape(len(features), -1))
