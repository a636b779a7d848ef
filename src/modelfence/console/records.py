"""The audit trail page: search, keyset paging and the chain's verification status.

Reads go to the audit store behind the gateway's chained sink (SQLite or PostgreSQL; the
indexes a search uses are part of the store's schema). A search is itself recorded
(`console:audit-search`, with its filters), as the admin API records its reads; so is a
full verification (`console:audit-verify`, by whom and what it found).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..audit.chain import Row, us_to_iso
from ..audit.store import AuditStore, Query
from ..errors import RequestError, StoreError
from . import audit_search
from .chain_status import check_head, check_window
from .chain_verify import ACTION as VERIFY_ACTION
from .chain_verify import ChainVerifier
from .headers import SECURITY_HEADERS
from .kit import ConsoleKit, Posted
from .session import ConsoleSession

AUDIT_SCOPE = "audit:read"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One record as the table shows it (never its payload's inputs)."""

    seq: int
    time: str
    principal: str
    tenant: str
    model: str
    action: str
    status: str
    reason: str
    target: str


def row_view(row: Row) -> AuditRow:
    try:
        record: dict[str, Any] = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        record = {}
    return AuditRow(row.seq, us_to_iso(row.ts_us)[:23], row.principal or "", row.tenant or "",
                    row.model or "", row.action or "", "" if row.status is None
                    else str(row.status), str(record.get("reason") or "")[:200],
                    str(record.get("key_id") or "")[:64])


class AuditPages:
    """`/console/audit` and the full verification it can start."""

    def __init__(self, kit: ConsoleKit, store: AuditStore | None, verifier: ChainVerifier | None,
                 public: Ed25519PublicKey | None) -> None:
        self._kit = kit
        self._store = store
        self._verifier = verifier
        self._public = public

    def routes(self) -> list[BaseRoute]:
        return [self._kit.page_route("/console/audit", AUDIT_SCOPE, self.search),
                Route("/console/audit/verify", self.verify, methods=["POST"])]

    async def search(self, request: Request, session: ConsoleSession) -> Response:
        if self._store is None:
            return self._kit.render("rec-audit.html", session=session, title="Audit trail",
                                    filters=audit_search.Filters(), message=(
                                        "the audit log is not a chained store: configure a "
                                        "sqlite:/// or postgresql:// audit.sink to search it"))
        try:
            filters, before = audit_search.parse(request.query_params)
            filters = audit_search.scoped(filters, session)
            return await self._page(request, session, self._store, filters, before)
        except RequestError as exc:
            return self._kit.render("rec-audit.html", exc.status, session=session,
                                    title="Audit trail", filters=audit_search.Filters(),
                                    message=f"search refused: {exc.message}")
        except StoreError:
            return self._kit.render("rec-audit.html", 503, session=session,
                                    title="Audit trail", filters=audit_search.Filters(),
                                    message="the audit log cannot be read now; try again")

    async def _page(self, request: Request, session: ConsoleSession, store: AuditStore,
                    filters: audit_search.Filters, before: audit_search.Cursor | None
                    ) -> Response:
        size = self._kit.page_size
        rows = await store.select(audit_search.query(filters, before, size))
        window = await check_window(store, rows)
        head = await check_head(store, self._public)
        last = await last_verification(store)
        await self._kit.record("console:audit-search", session.admin, 200, request,
                               details={"filters": filters.link(before)})
        more = filters.link(filters.cursor_after(rows[-1])) if len(rows) == size else None
        running = self._verifier.running if self._verifier is not None else None
        return self._kit.render(
            "rec-audit.html", session=session, title="Audit trail", filters=filters,
            rows=[row_view(r) for r in rows], window=window, head=head, last=last,
            older=more, paged=before is not None, running=running,
            can_verify=self._verifier is not None)

    async def verify(self, request: Request) -> Response:
        posted = await self._kit.post(request, AUDIT_SCOPE)
        if not isinstance(posted, Posted):
            return posted
        admin = posted.session.admin
        if self._verifier is None:
            await self._kit.record(VERIFY_ACTION, admin, 404, request)
            return self._kit.render("denied.html", 404, session=posted.session,
                                    title="Audit trail", message="no chained audit store")

        async def finish(who: str, status: int, details: dict[str, Any]) -> None:
            await self._kit.record(VERIFY_ACTION, who, status, request, details=details)

        started = self._verifier.start(admin, finish)
        await self._kit.record(VERIFY_ACTION, admin, 202 if started else 409, request,
                               details={"started": started})
        return RedirectResponse("/console/audit", status_code=303, headers=SECURITY_HEADERS)


@dataclass(frozen=True, slots=True)
class LastVerification:
    """The newest completed full verification found in the log."""

    time: str
    admin: str
    ok: bool
    records: int
    seconds: float
    damage: str


async def last_verification(store: AuditStore) -> LastVerification | None:
    rows = await store.select(Query(action=VERIFY_ACTION, newest_first=True, limit=20))
    for row in rows:
        try:
            details = orjson.loads(row.payload).get("details") or {}
        except (orjson.JSONDecodeError, AttributeError):
            continue
        result = details.get("verified") if isinstance(details, dict) else None
        if not isinstance(result, dict):
            continue
        damage = result.get("damage") or {}
        text = (f"record {damage.get('seq')}: {damage.get('kind')} — {damage.get('detail')}"
                if isinstance(damage, dict) and damage else str(result.get("error") or ""))
        return LastVerification(us_to_iso(row.ts_us)[:19], row.principal or "",
                                bool(result.get("ok")), int(result.get("records") or 0),
                                float(result.get("seconds") or 0.0), text[:300])
    return None
