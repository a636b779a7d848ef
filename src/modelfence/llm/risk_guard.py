"""The LLM risk book's place in the chain: risk in before policy, evidence out after.

`on_request` (the shared `risk.RiskGuard`) sets `call.risk` (principal or tenant, the
higher) before the policy, rate limit and control-band choices read it. `on_complete`
tells the book what the call showed — tokens used, a blocked system-prompt leak, the
screening verdict, the output fields asked beyond the caller's band (refused or clamped) —
and raises an alert for each episode that started (`risk.Alert`, as the monitor's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from ..risk import Alert, RiskGuard, alert_for
from .call import LlmCall, LlmExchange
from .guards import KIND_OF_ACTION, PROBE_REASONS
from .risk import LlmRiskBook, Observation
from .risk_repeats import RepeatedHits
from .risk_sync import RiskStream

AlertSink = Callable[[Alert], None]


class LlmRiskGuard(RiskGuard[LlmCall]):
    name: ClassVar[str] = "llm_risk"

    def __init__(self, book: LlmRiskBook, alert: AlertSink, *, replica: str = "",
                 stream: RiskStream | None = None) -> None:
        super().__init__(book)
        self.book = book
        self._alert = alert
        self._replica = replica
        self.stream = stream
        self.repeats = RepeatedHits(max_principals=book.max_subjects)

    async def on_complete(self, call: LlmCall) -> None:
        if call.principal is None or call.model is None:
            return
        ex = call.exchange
        reason = call.error.reason if call.error is not None else ""
        asked = tuple(dict.fromkeys(ex.asked)) if ex is not None else ()
        screen = call.screen
        if screen in ("extraction", "injection") and ex is not None and not self.repeats.fresh(
                call.principal.id, KIND_OF_ACTION[call.action], ex.request):
            screen = ""  # an earlier flagged turn of the conversation, screened again
        obs = Observation(model=call.model.name, principal=call.principal.id,
                          tenant=call.principal.tenant or None,
                          tokens=_tokens(call, ex),
                          leak=ex is not None and ex.leaked,
                          screen=screen, screen_score=call.screen_score if screen else 0.0,
                          probe=reason in PROBE_REASONS and not asked,
                          asked=asked, ts=time.time(), origin=self._replica)
        if not (obs.tokens or obs.leak or obs.probe or obs.asked
                or obs.screen not in ("", "benign")):
            return
        self.record(obs)

    def record(self, obs: Observation) -> None:
        """Score `obs` (from a call, or evidence found apart from one, such as the
        distillation test's), alert on each episode it started and share it with the other
        replicas."""
        for crossing in self.book.observe(obs, now=obs.ts):
            self._alert(alert_for(obs.model, crossing))
        if self.stream is not None:
            self.stream.publish(obs)


def _tokens(call: LlmCall, ex: LlmExchange | None) -> int:
    """Tokens used; where a budget keeps its reservation (usage unknown), the estimate."""
    if call.tokens_used is not None:
        return call.tokens_used
    return ex.usage.total if ex is not None and ex.usage is not None else 0
