"""Per-principal, per-model query counts: a policy input (`context.queries`).

Counts live in this process (they restart at zero); shared counts on Redis or
PostgreSQL come with the quota and budget work.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from ..gateway.call import Call
from ..gateway.chain import Guard


class UsageGuard(Guard):
    """Puts the count so far on the call; counts answered inferences when they complete."""

    name: ClassVar[str] = "usage"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model"})
    provides: ClassVar[frozenset[str]] = frozenset({"queries"})

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None and call.model is not None
        call.queries = self._counts[(call.principal.id, call.model.name)]

    async def on_complete(self, call: Call) -> None:
        if call.status == 200 and call.action == "infer" and call.principal and call.model:
            self._counts[(call.principal.id, call.model.name)] += call.inputs.rows if (
                call.inputs) else 1
