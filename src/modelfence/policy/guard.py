"""The policy guard: every call is decided by Cedar; deny by default; fail closed."""

from __future__ import annotations

import logging
import time
from typing import ClassVar

from ..errors import Forbidden
from ..kernel.call import Call
from ..kernel.chain import Guard
from .engine import PolicyEngine
from .request import Facts

log = logging.getLogger("modelfence.policy")

PURPOSE_HEADER = "x-modelfence-purpose"


class PolicyGuard(Guard[Call]):
    name: ClassVar[str] = "policy"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "queries"})
    # context.risk and the screening verdict: a monitor or screen placed after policy
    # would leave policy deciding on the defaults, so the chain refuses to start
    reads: ClassVar[frozenset[str]] = frozenset({"risk", "screen", "screen_score",
                                                 "screen_failed", "epsilon_spent"})
    provides: ClassVar[frozenset[str]] = frozenset({"decision"})

    def __init__(self, engine: PolicyEngine) -> None:
        self._engine = engine

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None and call.model is not None
        facts = Facts(source=call.source,
                      purpose=call.request.headers.get(PURPOSE_HEADER, "")[:128],
                      risk=call.risk, queries=call.queries, screen=call.screen,
                      epsilon_spent=call.epsilon_spent,
                      screen_score=call.screen_score, screen_failed=call.screen_failed,
                      now=time.time())  # set here: the engine would copy Facts to set it
        # PolicyError → 503, fail closed
        verdict = self._engine.decide_call(call.principal, call.action, call.model.name,
                                           call.model.settings.attributes, facts)
        call.policy_ids = list(verdict.policies)
        call.decision = "allow" if verdict.allowed else "deny"
        if verdict.allowed:
            call.pinned_bands = verdict.shaping
            call.note(self.name, "allow", ",".join(verdict.policies))
            return
        if verdict.policies:
            reason = f"denied by policy {', '.join(verdict.policies)}"
        else:
            reason = f"no policy permits {call.action} on model {call.model.name!r}"
        call.note(self.name, "deny", reason)
        raise Forbidden(f"access denied: {reason}", reason="policy_denied")
