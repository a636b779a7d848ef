"""What one principal has spent and received: budgets, ε, and watermarked answers.

Each page looks one principal up (`?principal=ID`), so it costs a few indexed reads
whatever the number of principals: each configured budget's usage for each model it
covers in the current period (the quota budget store), the ε it and its tenant spent on
each model with a private band (the privacy accountant), and the answers of each
watermarked model it received marked or as controls, by watermark key (the evidence
store). A scoped admin sees its models only, and a principal of another tenant not at
all (its tenant is read from its newest audit record).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..audit.chain import us_to_iso
from ..audit.store import AuditStore, Query
from ..config import Budget
from ..errors import BadRequest, Forbidden, RequestError, StoreError
from ..quota.budgets import BudgetStore, budget_key, period_bounds
from ..watermark.store import EvidenceStore
from .audit_search import MAX_TEXT
from .kit import ConsoleKit
from .session import ConsoleSession

if TYPE_CHECKING:  # the accountant pulls in dp-accounting and SciPy: not for a type
    from ..privacy.budget import Spent

HOLDINGS_SCOPE = "risk:read"

#: What a holdings page shows of one principal (and tenant) an admin may see.
Holdings = Callable[[ConsoleSession, str, str], Awaitable[dict[str, object]]]


class EpsilonBook(Protocol):
    """The privacy accountant as the console reads it (privacy.wiring.Privacy)."""

    def watches(self, model: str) -> bool: ...
    async def spent(self, model: str, principal: str, tenant: str) -> Spent: ...
    def describe(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class Books:
    """Where budgets, ε and watermark evidence are kept; any may be absent."""

    models: list[str]  # every model the gateway serves
    budgets: list[Budget] = field(default_factory=list)
    budget_store: BudgetStore | None = None
    privacy: EpsilonBook | None = None
    evidence: EvidenceStore | None = None
    watermarked: list[str] = field(default_factory=list)
    audit: AuditStore | None = None


@dataclass(frozen=True, slots=True)
class BudgetUse:
    model: str
    period: str
    caps: str
    used: str
    share: float  # the largest share of a cap used, 0..1 (and beyond when over)
    resets: str


@dataclass(frozen=True, slots=True)
class EpsilonUse:
    model: str
    principal: float
    tenant: float
    principal_budget: object
    tenant_budget: object


def principal_of(params: Mapping[str, str]) -> tuple[str, str]:
    """The principal (and optional tenant) looked up; BadRequest for hostile input."""
    out = []
    for name in ("principal", "tenant"):
        value = params.get(name, "").strip()
        if len(value) > MAX_TEXT or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise BadRequest(f"{name}: at most {MAX_TEXT} printable characters")
        out.append(value)
    return out[0], out[1]


def _caps(b: Budget) -> str:
    parts = [f"{b.queries:,} queries" if b.queries else "", f"{b.rows:,} rows" if b.rows else "",
             f"{b.tokens:,} tokens" if b.tokens else ""]
    return ", ".join(p for p in parts if p)


class HoldingPages:
    """`/console/budgets` (quota budgets and ε) and `/console/watermarks`."""

    def __init__(self, kit: ConsoleKit, books: Books) -> None:
        self._kit = kit
        self._books = books

    def routes(self) -> list[BaseRoute]:
        return [self._page("budgets", "Budgets and ε spent", "a budget store cannot answer now",
                           self._budgets),
                self._page("watermarks", "Watermark holdings",
                           "the evidence store cannot answer now", self._watermarks)]

    def _page(self, name: str, title: str, unavailable: str, holdings: Holdings) -> Route:
        """`/console/NAME` (template `rec-NAME.html`): the principal (and tenant) looked up,
        recorded as `console:NAME`, and what `holdings` finds for it; or the page that
        refuses the lookup, or says that a store behind it (`unavailable`) cannot answer."""
        template = f"rec-{name}.html"

        async def page(request: Request, session: ConsoleSession) -> Response:
            return await self._answer(request, session, template, title, f"console:{name}",
                                      unavailable, holdings)

        return self._kit.page_route(f"/console/{name}", HOLDINGS_SCOPE, page)

    async def _answer(self, request: Request, session: ConsoleSession, template: str,
                      title: str, action: str, unavailable: str, holdings: Holdings
                      ) -> Response:
        def show(status: int = 200, principal: str = "", tenant: str = "",
                 **values: object) -> Response:
            return self._kit.render(template, status, session=session, title=title,
                                    principal=principal, tenant=tenant, **values)

        try:
            principal, tenant = principal_of(request.query_params)
            if principal:
                tenant = await self._tenant_check(session, principal, tenant)
        except RequestError as exc:
            return show(exc.status, message=exc.message)
        except StoreError:
            return show(503, message="a store behind this page cannot answer now")
        if principal:
            await self._kit.record(action, session.admin, 200, request, target=principal)
        try:
            found = await holdings(session, principal, tenant)
        except StoreError:
            return show(503, principal, tenant, message=unavailable)
        return show(200, principal, tenant, **found)

    async def _tenant_check(self, session: ConsoleSession, principal: str, tenant: str
                            ) -> str:
        """The principal's tenant (as given, else from its newest audit record); a
        tenant-scoped admin may look up its tenants' principals only: the tenant it names
        (or the newest record's) must be one of its own and appear in a record of the
        principal, so naming its own tenant for another's principal is refused."""
        scoped = "*" not in session.tenants
        if scoped and tenant and not session.covers_tenant(tenant):
            raise Forbidden(f"{session.admin} may look up principals of its tenants only")
        audit = self._books.audit
        if scoped and audit is None:  # no record to tell the principal's tenant by
            raise Forbidden(f"{session.admin} may look up principals of its tenants only, "
                            "and without a chained audit log their tenant is unknown")
        if audit is not None and (scoped or not tenant):
            rows = await audit.select(Query(principal=principal, tenant=tenant or None,
                                            newest_first=True, limit=1))
            tenant = (rows[0].tenant or "") if rows else ""
        if scoped and not session.covers_tenant(tenant or None):
            raise Forbidden(f"{session.admin} may look up principals of its tenants only")
        return tenant

    def _models(self, session: ConsoleSession, models: list[str]) -> list[str]:
        return [m for m in models if session.covers(m)]

    async def _budgets(self, session: ConsoleSession, principal: str, tenant: str
                       ) -> dict[str, object]:
        books = self._books
        uses: list[BudgetUse] = []
        eps: list[EpsilonUse] = []
        if principal and books.budget_store is not None:
            uses = await self._budget_uses(session, principal)
        if principal and books.privacy is not None:
            eps = await self._epsilon(session, principal, tenant)
        privacy = books.privacy.describe() if books.privacy is not None else None
        return {"uses": uses, "eps": eps, "privacy": privacy,
                "budgets": [(b, _caps(b), ", ".join(b.models) or "every model")
                            for b in books.budgets],
                "has_store": books.budget_store is not None}

    async def _budget_uses(self, session: ConsoleSession, principal: str) -> list[BudgetUse]:
        store = self._books.budget_store
        assert store is not None
        now = datetime.now(UTC)
        out = []
        for index, b in enumerate(self._books.budgets):
            period, ends = period_bounds(b.period, now)
            for model in self._models(session, b.models or self._books.models):
                key = budget_key(index, principal, model, period)
                queries, rows = await store.usage(key)
                tokens = (await store.usage(key + "|tokens"))[1] if b.tokens else 0
                shares = [used / cap for used, cap in ((queries, b.queries), (rows, b.rows),
                                                       (tokens, b.tokens)) if cap]
                used = ", ".join(p for p in (
                    f"{queries:,} queries" if b.queries else "",
                    f"{rows:,} rows" if b.rows else "",
                    f"{tokens:,} tokens" if b.tokens else "") if p)
                out.append(BudgetUse(model, f"{b.period} {period}", _caps(b), used,
                                     max(shares, default=0.0),
                                     "never" if b.period == "total" else ends.isoformat()[:16]))
        return out

    async def _epsilon(self, session: ConsoleSession, principal: str, tenant: str
                       ) -> list[EpsilonUse]:
        privacy = self._books.privacy
        assert privacy is not None
        budget = privacy.describe()
        out = []
        for model in self._models(session, self._books.models):
            if privacy.watches(model):
                spent = await privacy.spent(model, principal, tenant)
                out.append(EpsilonUse(model, spent.principal, spent.tenant,
                                      budget["principal_epsilon"], budget["tenant_epsilon"]))
        return out

    async def _watermarks(self, session: ConsoleSession, principal: str, tenant: str
                          ) -> dict[str, object]:
        evidence = self._books.evidence
        models = self._models(session, self._books.watermarked)
        held: list[tuple[str, str, str, int, str, str]] = []
        if principal and evidence is not None:
            for model in models:
                held.extend((model, h.kind, h.key_id, h.count, us_to_iso(h.first_us)[:19],
                             us_to_iso(h.last_us)[:19])
                            for h in await evidence.held_by(model, principal))
        return {"held": held, "models": models, "has_store": evidence is not None}
