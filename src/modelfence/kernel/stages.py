"""The one order of protections every protocol's chain follows, by named stage.

The OIP infer, metadata and download chains and the LLM chain are each a `Stages` with
their own guards in some stages; `chain(call_type)` puts them in the shared order and checks
that each guard works on that protocol's calls. A protocol fills a stage
(`dataclasses.replace`), it never inserts a guard at a position, so a guard added to one
stage lands at the same point on every protocol:

==============  ====================================================================
head            sees every call, answered or denied (metrics, audit)
identity        who is calling
inflight        the caller's cap on open requests: before any body is read
model           which model (the LLM lookup reads the body for the model's name)
usage           the caller's counts, for policy (`context.queries`)
screens         prompt screening
monitor         extraction risk, before policy reads it
policy          allow or deny
rate_limits     requests over time
body            the body read, checked and shaped for the backend
budgets         queries or tokens over the budget's window
outputs         response phases only: they run bottom to top, after the backend
==============  ====================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

from .chain import C, Guard, GuardChain
from .traced import ChainSpans, traced_chain

Stage = Literal["head", "identity", "inflight", "model", "usage", "screens", "monitor",
                "policy", "rate_limits", "body", "budgets", "outputs"]
_ORDER: tuple[Stage, ...] = get_args(Stage)


@dataclasses.dataclass(frozen=True)
class Stages:
    """The guards of one kind of call, by stage (each a sequence, empty when unused), and
    the spans their chains record, if tracing is on (`kernel/traced.py`)."""

    head: Sequence[Guard[Any]] = ()
    identity: Sequence[Guard[Any]] = ()
    inflight: Sequence[Guard[Any]] = ()
    model: Sequence[Guard[Any]] = ()
    usage: Sequence[Guard[Any]] = ()
    screens: Sequence[Guard[Any]] = ()
    monitor: Sequence[Guard[Any]] = ()
    policy: Sequence[Guard[Any]] = ()
    rate_limits: Sequence[Guard[Any]] = ()
    body: Sequence[Guard[Any]] = ()
    budgets: Sequence[Guard[Any]] = ()
    outputs: Sequence[Guard[Any]] = ()
    spans: ChainSpans | None = None

    def guards(self, *, through: Stage = "outputs") -> list[Guard[Any]]:
        """Every guard in the shared order, up to and including stage `through`."""
        out: list[Guard[Any]] = []
        for stage in _ORDER:
            out += getattr(self, stage)
            if stage == through:
                break
        return out

    def chain(self, call_type: type[C], *, through: Stage = "outputs",
              terminal_provides: frozenset[str] | None = None) -> GuardChain[C]:
        """The checked chain of `guards(through=...)` for calls of `call_type`; a misordered
        one, or one with a guard made for another protocol's calls, refuses to start."""
        return traced_chain(call_type, self.guards(through=through), self.spans,
                            terminal_provides)

    def with_(self, **stages: Sequence[Guard[Any]]) -> Stages:
        """A copy with the named stages filled (an unknown stage name is a TypeError)."""
        return dataclasses.replace(self, **cast(dict[str, Any], stages))
