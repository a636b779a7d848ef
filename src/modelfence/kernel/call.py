"""The `Call`: everything one request carries through the guard chain.

`Call` holds what every protocol shares and what the shared guards (identity, policy,
quota, audit, metrics) read; each protocol's subclass adds its own model entry and payload
(`backends.call.OipCall`, `llm.call.LlmCall`). The kernel names no feature class: who calls
and which model are the small `Caller` and `ServedModel` protocols below, which the
identity's `Principal` and each protocol's model entry satisfy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ..errors import RequestError


class Peer(Protocol):
    """Where a request came from (starlette's `Address`, a gRPC peer)."""

    @property
    def host(self) -> str: ...


class RequestFacts(Protocol):
    """The request behind a call, as guards read it whatever carried it: its headers (gRPC:
    its metadata), the peer's address and its body's chunks. Starlette's `Request` is one;
    the gRPC service passes an adapter (gateway/grpc_request.py)."""

    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def client(self) -> Peer | None: ...

    def stream(self) -> AsyncIterator[bytes]: ...


class Caller(Protocol):
    """Who is calling, as guards read it (the identity package's `Principal`)."""

    @property
    def id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def models(self) -> tuple[str, ...]: ...
    @property
    def key_id(self) -> str | None: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...

    def may_use(self, model: str) -> bool: ...


class ModelFacts(Protocol):
    """What policies know about a model (`resource.owner`, `resource.sensitivity`, ...)."""

    @property
    def owner(self) -> str: ...
    @property
    def sensitivity(self) -> int: ...
    @property
    def tags(self) -> Sequence[str]: ...


class ModelSettingsView(Protocol):
    @property
    def attributes(self) -> ModelFacts: ...


class ServedModel(Protocol):
    """A served model as the shared guards read it; each protocol's entry has more."""

    @property
    def name(self) -> str: ...
    @property
    def settings(self) -> ModelSettingsView: ...


@dataclass(slots=True)
class Decision:
    """One step of the decision trail: which guard decided what, and why."""

    guard: str
    outcome: str  # "allow" | "deny" | "note"
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"guard": self.guard, "outcome": self.outcome, "reason": self.reason}


@dataclass(slots=True)
class Call:
    """State of one request; guards read and fill it in declared order.

    The fields here are the ones a shared guard reads on every protocol: the screening
    verdict (policy's `context.screen`) and the rows and tokens a request costs (budgets)
    included, so that no shared guard needs to know which protocol carried the call.
    """

    #: Fields the terminal (the backend call) fills, for the response phases' requirements.
    backend_provides: ClassVar[frozenset[str]] = frozenset()

    request: RequestFacts
    action: str
    model_name: str | None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    received_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    principal: Caller | None = None
    model: ServedModel | None = None
    body: bytes | None = None
    response_body: bytes | None = None
    rows: int = 0  # data rows the decoded request carries (0 where the protocol has none)
    risk: float = 0.0
    shaping_band: str | None = None  # the output shaping band applied, for the audit record
    pinned_bands: tuple[str, ...] = ()  # bands a policy's @shaping annotation pins
    band_floor: float = 0.0  # an operator's pin: no output band below the one starting here
    queries: int = 0
    epsilon_spent: float = 0.0  # the ε this principal has spent on this model (privacy)
    policy_ids: list[str] = field(default_factory=list)
    decision: str = ""  # the policy's verdict once it has run: "allow" | "deny"
    trail: list[Decision] = field(default_factory=list)
    status: int = 0
    error: RequestError | None = None
    audit_failed: bool = False
    budget_holds: Sequence[object] = ()  # the budget guard's reservations, given back on failure
    token_cost: int | None = None  # the most tokens the checked request can use (token budgets)
    tokens_used: int | None = None  # the tokens it used (upstream's or estimated)
    screen: str = ""  # the prompt screening verdict ("benign", "injection", ...)
    screen_score: float = 0.0
    screen_failed: bool = False  # a detector could not answer (the label is its on_error)

    @property
    def source(self) -> str:
        client = self.request.client
        return client.host if client else "unknown"

    def note(self, guard: str, outcome: str, reason: str = "") -> None:
        self.trail.append(Decision(guard, outcome, reason))

    def decoded_request(self) -> Any:
        """The request as decoded and checked, as plain JSON values in its protocol's
        canonical form (the audit record's inputs, whatever the wire format was); None
        until it has decoded. Each protocol's subclass says what its request is."""
        return None

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started
