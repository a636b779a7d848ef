"""`quotas:` — rate limits weighted by risk, and hard extraction budgets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import StoreUrl, Strict, checked_rate


class RateLimit(Strict):
    """One limit, e.g. `100/minute` per principal; `models` narrows it to some models."""

    scope: Literal["principal", "tenant", "model"]
    rate: str = Field(description="limits syntax: '100/minute', '10/second;1000/hour'")
    models: list[str] = Field(default_factory=list, description="empty: every model")

    @field_validator("rate")
    @classmethod
    def _parse(cls, v: str) -> str:
        return checked_rate(v, "'100/minute' or '10/second;1000/hour'")


class Budget(Strict):
    """A hard cap per principal and model and period: queries (requests), input rows, and
    for LLMs tokens (prompt and completion)."""

    models: list[str] = Field(default_factory=list, description="empty: every model")
    queries: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1, description="LLM models: tokens per period")
    period: Literal["day", "week", "month", "total"] = "month"
    alert_at: float = Field(0.8, gt=0, le=1, description="share that raises an alert")

    @model_validator(mode="after")
    def _some_cap(self) -> Budget:
        if self.queries is None and self.rows is None and self.tokens is None:
            raise ValueError("a budget needs queries, rows, tokens or some of them")
        return self


class QuotaSettings(Strict):
    """Rate limits (the `limits` library) and extraction budgets.

    `risk_curve` maps the caller's risk score to a cost per request: at cost 4 a caller
    gets a quarter of its rate. Points are (risk, cost), linearly interpolated.
    """

    storage: str = Field("memory://", description="memory:// or redis://HOST:PORT/DB")
    strategy: Literal["moving-window", "fixed-window", "sliding-window-counter"] = (
        "moving-window")
    fail_open: bool = Field(False, description="rate limits only: allow when storage is down")
    limits: list[RateLimit] = Field(default_factory=list)
    risk_curve: list[tuple[float, float]] = Field(
        default_factory=lambda: [(0.0, 1.0), (0.5, 1.0), (0.8, 4.0), (1.0, 10.0)])
    budget_store: StoreUrl = Field("sqlite:///budgets.db", description="sqlite:/// or postgresql://")
    budgets: list[Budget] = Field(default_factory=list)

    @field_validator("risk_curve")
    @classmethod
    def _curve(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        risks = [r for r, _ in v]
        if not v or risks != sorted(risks) or any(not 0 <= r <= 1 for r in risks):
            raise ValueError("risk_curve needs (risk, cost) points with risk rising in [0, 1]")
        if any(c < 1 for _, c in v):
            raise ValueError("risk_curve costs must be >= 1 (a cost below 1 would raise a limit)")
        return v
