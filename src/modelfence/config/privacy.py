"""`privacy:` — the ε budget and the repeat memory behind differentially private answers.

A model's band opts into differential privacy by naming a private defense (``dp-rr:1``,
``dp-bdpl:1,0.2``, ``dp-laplace:2``, ``dp-gauss:2,1e-6``); this section says how much a
principal and a tenant may spend on each model, what happens once they have, and how long
a randomised answer is repeated to whoever asks the same question.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import StoreUrl, Strict


class PrivacySettings(Strict):
    """Budgets are per model: ε spent on one model says nothing about another's answers.

    Defaults: ε 100 per principal and 1,000 per tenant per model, over the whole life of the
    store (`window: total`), at δ 1e-6; refused with 429 once spent; an alert at 80%; a
    randomised answer repeated for a day. The store must outlive a restart and be shared by
    replicas for the budget to hold: `memory://` is for one process and tests only.
    """

    store: StoreUrl = Field("sqlite:///privacy.db",
                            description="memory://, sqlite:///PATH or postgresql://")
    principal_epsilon: float | None = Field(
        100.0, gt=0, description="ε each principal may spend per model; null: no cap")
    tenant_epsilon: float | None = Field(
        1000.0, gt=0, description="ε each tenant's principals together may spend per model")
    delta: float = Field(1e-6, gt=0, lt=0.01, description="δ at which ε spent is stated")
    window: Literal["day", "week", "month", "total"] = Field(
        "total", description="budgets start again each window; total: never")
    on_spent: Literal["refuse", "labels"] = Field(
        "refuse", description="once spent: refuse (429) or answer with labels only")
    alert_at: float = Field(0.8, gt=0, le=1, description="share of a budget that alerts")
    repeat_period_s: float = Field(
        86_400.0, ge=1, le=366 * 86_400,
        description="the same input gets the same randomised answer within one period")
    durable: bool = Field(
        True, description="false: SQLite and PostgreSQL commit a charge without waiting for "
        "the disk (about 0.1 ms instead of a flush); a database or OS crash can then forget "
        "the last moment of charges")
    repeat_entries: int = Field(
        100_000, ge=1, description="memory://: answers remembered at most (oldest dropped)")
