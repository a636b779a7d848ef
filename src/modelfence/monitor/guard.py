"""The monitor's place in the guard chain: risk in before policy, observations out after.

`on_request` (the shared `risk.RiskGuard`) sets `call.risk` from the caller's (or its
tenant's) current score, before the policy and rate-limit guards read it, so
`context.risk` in Cedar and the risk-weighted rate limits act on it. `on_complete` hands
the answered rows and the model's probabilities (before output shaping: the monitor judges
what the model said, not what the caller saw) to the service's queue; nothing there runs
on the request's time in the common case. An operator's pin (`pins`) is applied after it
by the shared `risk.PinGuard`, as on the LLM routes.
"""

from __future__ import annotations

from typing import ClassVar

from ..backends.call import OipCall
from ..risk import RiskGuard
from .service import MonitorService, Subject, rows_of


class MonitorGuard(RiskGuard[OipCall]):
    name: ClassVar[str] = "monitor"

    def __init__(self, service: MonitorService) -> None:
        super().__init__(service)
        self._service = service

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
        self._service.submit(call.model.name,
                             Subject(call.principal.id, call.principal.tenant or None),
                             features, proba.reshape(len(features), -1))
