"""The console's records pages over the gateway's stores: audit trail, budgets and ε,
watermark holdings, reports. Built from the settings and the stores the gateway owns, so
the console package itself never imports the gateway."""

from __future__ import annotations

from starlette.routing import BaseRoute

from ..audit.checkpoint import load_public_key
from ..audit.sinks import audit_store_of
from ..config import Settings
from ..console.app import NavLink
from ..console.chain_verify import ChainVerifier
from ..console.holdings import HOLDINGS_SCOPE, Books, HoldingPages
from ..console.kit import ConsoleKit
from ..console.records import AUDIT_SCOPE, AuditPages
from ..console.reports import REPORTS_SCOPE, ReportPages
from ..quota.budgets import BudgetStore
from ..watermark.guard import WatermarkGuard
from .admin import AdminApi


def records_routes(settings: Settings, admin_api: AdminApi, kit: ConsoleKit, *,
                   budget_store: BudgetStore | None = None,
                   watermark: WatermarkGuard | None = None
                   ) -> tuple[list[BaseRoute], list[NavLink]]:
    """The records pages' routes and their navigation links."""
    store = audit_store_of(admin_api.audit)
    key_file = settings.audit.checkpoint_key_file
    public = load_public_key(key_file) if key_file is not None else None
    verifier = ChainVerifier(settings.audit.sink, public) if store is not None else None
    classifiers = [m.name for m in settings.models]
    books = Books(
        models=[*classifiers, *(m.name for m in settings.llm.models)],
        budgets=list(settings.quotas.budgets), budget_store=budget_store,
        privacy=admin_api.privacy, evidence=watermark.store if watermark else None,
        watermarked=[m for m in classifiers if watermark and watermark.watches(m)],
        audit=store)
    pages = [*AuditPages(kit, store, verifier, public).routes(),
             *HoldingPages(kit, books).routes()]
    nav = [NavLink("/console/audit", "Audit trail", AUDIT_SCOPE),
           NavLink("/console/budgets", "Budgets", HOLDINGS_SCOPE),
           NavLink("/console/watermarks", "Watermarks", HOLDINGS_SCOPE)]
    if settings.console.reports_dir is not None:  # no folder, no reports page
        pages += ReportPages(kit, settings.console.reports_dir).routes()
        nav.append(NavLink("/console/reports", "Reports", REPORTS_SCOPE))
    return pages, nav
