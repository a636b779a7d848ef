"""The one order of protections every protocol's chain follows, by named stage.

The OIP infer, metadata and download chains and the LLM chain are each a `Stages` with
their own guards in some stages; `chain()` puts them in the shared order. A protocol fills
a stage (`dataclasses.replace`), it never inserts a guard at a position, so a guard added
to one stage lands at the same point on every protocol:

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
from typing import Literal

from .chain import TERMINAL_FIELDS, Guard, GuardChain

Stage = Literal["head", "identity", "inflight", "model", "usage", "screens", "monitor",
                "policy", "rate_limits", "body", "budgets", "outputs"]


@dataclasses.dataclass(frozen=True)
class Stages:
    """The guards of one kind of call, by stage (each a sequence, empty when unused)."""

    head: Sequence[Guard] = ()
    identity: Sequence[Guard] = ()
    inflight: Sequence[Guard] = ()
    model: Sequence[Guard] = ()
    usage: Sequence[Guard] = ()
    screens: Sequence[Guard] = ()
    monitor: Sequence[Guard] = ()
    policy: Sequence[Guard] = ()
    rate_limits: Sequence[Guard] = ()
    body: Sequence[Guard] = ()
    budgets: Sequence[Guard] = ()
    outputs: Sequence[Guard] = ()

    def guards(self, *, through: Stage = "outputs") -> list[Guard]:
        """Every guard in the shared order, up to and including stage `through`."""
        out: list[Guard] = []
        for f in dataclasses.fields(self):
            out += getattr(self, f.name)
            if f.name == through:
                break
        return out

    def chain(self, *, through: Stage = "outputs",
              terminal_provides: frozenset[str] = TERMINAL_FIELDS) -> GuardChain:
        """The checked chain of `guards(through=...)`; a misordered one refuses to start."""
        return GuardChain(self.guards(through=through), terminal_provides=terminal_provides)

    def with_(self, **stages: Sequence[Guard]) -> Stages:
        """A copy with the named stages filled (an unknown stage name is a TypeError)."""
        return dataclasses.replace(self, **stages)
