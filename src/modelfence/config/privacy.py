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

    Defaults: no cap (ε is accounted, shown to policy as `context.epsilon_spent` and in
    /admin/risk, never refused: what ε a model's callers may spend depends on the mechanism,
    from a few dozen answers at ``dp-rr:4`` to thousands at ``dp-rr:0.5``, so the operator
    sets it); counted over the whole life of the store (`window: total`), at δ 1e-6; refused
    with 429 once a cap is spent; an alert at 80% of a cap; a randomised answer repeated for
    a day. The store must outlive a restart and be shared by replicas for a cap to hold:
    `memory://` is for one process and tests only.
    """

    store: StoreUrl = Field("sqlite:///privacy.db",
                            description="memory://, sqlite:///PATH or postgresql://")
    principal_epsilon: float | None = Field(
        None, gt=0, description="ε each principal may spend per model; null: no cap")
    tenant_epsilon: float | None = Field(
        None, gt=0, description="ε each tenant's principals together may spend per model; "
        "null: no cap")
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
