"""The `Call`: everything one request carries through the guard chain."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

    from ..backends.base import ModelEntry
    from ..errors import RequestError
    from ..identity.principal import Principal
    from .oip import InferRequest, InferResponse


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
    """State of one request; guards read and fill it in declared order."""

    request: Request
    action: str
    model_name: str | None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    received_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    model: ModelEntry | None = None
    body: bytes | None = None
    inputs: InferRequest | None = None
    outputs: InferResponse | None = None
    response_body: bytes | None = None
    result: Any = None
    risk: float = 0.0
    unshaped_proba: Any = None  # the model's probabilities before output shaping
    shaping_band: str | None = None  # the output shaping band applied, for the audit record
    pinned_bands: tuple[str, ...] = ()  # bands a policy's @shaping annotation pins
    queries: int = 0
    policy_ids: list[str] = field(default_factory=list)
    decision: str = ""  # the policy's verdict once it has run: "allow" | "deny"
    trail: list[Decision] = field(default_factory=list)
    status: int = 0
    error: RequestError | None = None
    audit_failed: bool = False
    budget_holds: list[Any] = field(default_factory=list)
    token_cost: int | None = None  # LLM calls: the most tokens the checked request can use
    tokens_used: int | None = None  # LLM calls: the tokens it used (upstream's or estimated)
    screen: str = ""  # LLM calls: the prompt screening verdict ("benign", "injection", ...)
    screen_score: float = 0.0
    screen_failed: bool = False  # a detector could not answer (the label is its on_error)

    @property
    def source(self) -> str:
        client = self.request.client
        return client.host if client else "unknown"

    def note(self, guard: str, outcome: str, reason: str = "") -> None:
        self.trail.append(Decision(guard, outcome, reason))

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started
