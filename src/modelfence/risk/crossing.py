"""What an episode's start reports, on every protocol: one `Crossing`, one `Alert`.

A subject is a principal (an API key, a user) and, when the request names one, its tenant:
the tenant sees every request of all its principals, so a thief who spreads one extraction
over many keys is judged on the whole of it. An observation steps both subjects' episodes;
`crossings` turns the episodes that started into the alerts to raise, one per episode:

- a principal's episode is one Crossing; when its tenant's started with the same
  observation, the Crossing carries the tenant's risk too (`tenant_risk`), not a second one;
- a tenant's episode is a Crossing of its own only when the principal that sent the
  observation is not in an episode (evidence spread over keys, a Sybil): otherwise the
  principal's alert already told of it.

`alert_for` makes the record that the alert channels (audit, metrics, webhook) carry, the
same for a classifier caller and an LLM caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

Kind = Literal["principal", "tenant"]


class Assessed(Protocol):
    """A subject's risk as each protocol's book reports it."""

    @property
    def score(self) -> float: ...  # the effective (held) risk

    @property
    def queries(self) -> int: ...  # the requests it rests on

    def explain(self) -> str: ...


R = TypeVar("R", bound=Assessed)


@dataclass(frozen=True, slots=True)
class Crossing(Generic[R]):
    """An episode that started with an observation: one per alert to raise.

    `tenant` is the tenant the observation named (a tenant's Crossing names it as its
    subject too); `tenant_risk` is set when a principal's and its tenant's episodes started
    together.
    """

    subject_kind: Kind
    subject: str
    risk: R
    tenant: str | None = None
    tenant_risk: R | None = None


def crossings(principal: str, tenant: str | None, started: Mapping[Kind, R],
              principal_flagged: bool) -> list[Crossing[R]]:
    """The alerts for the episodes that `started` with one observation (by subject kind,
    the risk each started with); `principal_flagged`: whether the principal is in an
    episode after it (a tenant's start is then already told by the principal's alert)."""
    mine = started.get("principal")
    if mine is not None:
        return [Crossing("principal", principal, mine, tenant, started.get("tenant"))]
    theirs = started.get("tenant")
    if tenant is not None and theirs is not None and not principal_flagged:
        return [Crossing("tenant", tenant, theirs, tenant)]
    return []


@dataclass(frozen=True, slots=True)
class Alert:
    """The record of one episode's start, whichever protocol's book found it."""

    model: str
    kind: str  # "principal" | "tenant"
    subject: str
    tenant: str | None
    risk: float
    queries: int
    explanation: str
    tenant_risk: float | None = None  # the tenant's, when its episode started with this one

    def describe(self) -> str:
        also = ("" if self.tenant_risk is None else
                f"; its tenant {self.tenant} is flagged too (risk {self.tenant_risk:.2f})")
        return (f"extraction risk {self.risk:.2f} for {self.kind} {self.subject} on model "
                f"{self.model} after {self.queries} queries{also}: {self.explanation}")

    def to_json(self) -> dict[str, Any]:
        """The webhook's body."""
        return {"type": "monitor.alert", "time": datetime.now(UTC).isoformat(),
                "model": self.model, "kind": self.kind, "subject": self.subject,
                "tenant": self.tenant, "risk": round(self.risk, 4), "queries": self.queries,
                "tenant_flagged": self.tenant_risk is not None,
                "tenant_risk": None if self.tenant_risk is None else round(self.tenant_risk, 4),
                "explanation": self.explanation}


def alert_for(model: str, crossing: Crossing[Any]) -> Alert:
    """The one alert for an episode's start (naming the tenant's too when it came along)."""
    risk = crossing.risk
    return Alert(model=model, kind=crossing.subject_kind, subject=crossing.subject,
                 tenant=crossing.tenant, risk=risk.score, queries=risk.queries,
                 explanation=risk.explain(),
                 tenant_risk=None if crossing.tenant_risk is None else crossing.tenant_risk.score)
