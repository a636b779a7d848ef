"""The records pages through Starlette: audit search answers (and refuses hostile input
with a 400 page), budgets, ε, watermark holdings, and report downloads that never leave
the reports folder."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from modelfence.audit.chain import Entry, link
from modelfence.audit.store import Batch
from modelfence.audit.store_sqlite import SqliteAuditStore
from modelfence.config import Budget
from modelfence.console.holdings import Books, HoldingPages
from modelfence.console.kit import ConsoleKit
from modelfence.console.records import AuditPages
from modelfence.console.reports import ReportPages
from modelfence.console.session import COOKIE_NAME, SessionSigner
from modelfence.errors import StoreError
from modelfence.privacy.budget import Spent
from modelfence.quota.budgets import SqliteBudgetStore, budget_key, period_bounds
from modelfence.watermark.store import EvidenceRecord, MemoryEvidenceStore

SECRET = b"s" * 32
T0 = 1_764_806_400_000_000


class _Eps:
    def watches(self, model: str) -> bool:
        return model == "digits"

    async def spent(self, model: str, principal: str, tenant: str) -> Spent:
        return Spent(0.25 if principal == "alice" else 0.0, 0.5)

    def describe(self) -> dict[str, object]:
        return {"principal_epsilon": 1.0, "tenant_epsilon": 4.0, "delta": 1e-6,
                "window": "day", "on_spent": "refuse"}


def _mark(principal: str, i: int, kind: str = "watermark") -> EvidenceRecord:
    return EvidenceRecord(kind, "digits", principal, "t1", "wm-key-1", f"{i:064x}", b"\0" * 8,
                          None, 2, 10, 1, "1", 2, "2", f"r{i}", T0 + i)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, list[tuple[Any, ...]], Path]]:
    records: list[tuple[Any, ...]] = []

    async def record(action: str, admin: str, status: int, request: Request,
                     target: str | None, details: Any) -> None:
        records.append((action, admin, status, target))

    kit = ConsoleKit(SessionSigner(SECRET, lifetime_s=600), record, page_size=10)
    audit = SqliteAuditStore(tmp_path / "audit.db")
    budgets = SqliteBudgetStore(tmp_path / "budgets.db")
    evidence = MemoryEvidenceStore()
    reports = tmp_path / "reports"
    (reports / "run-1").mkdir(parents=True)
    (reports / "run-1" / "report.html").write_text("<script>alert(1)</script>")
    (reports / "bundle.json").write_text('{"evidence": 1}')
    (tmp_path / "outside.txt").write_text("the server's secret")
    os.symlink(tmp_path / "outside.txt", reports / "link.txt")
    os.symlink(tmp_path, reports / "up")

    async def setup() -> None:
        await audit.open()
        await budgets.open()
        entries = [Entry(T0 + i, f"r{i}", "alice" if i % 2 else "bob", "t1", "digits",
                         "infer", 200 if i % 3 else 503, b'{"reason":"answered"}')
                   for i in range(25)]
        await audit.commit(lambda h, c: Batch(link(h, entries)))
        period, _ = period_bounds("day", datetime.now(UTC))
        await budgets.reserve(budget_key(0, "alice", "digits", period), 7, 70, None, None)
        await evidence.add([_mark("alice", i) for i in range(3)] + [_mark("alice", 9, "control")])

    books = Books(models=["digits", "iris"], budgets=[Budget(queries=10, rows=1000,
                                                                period="day")],
                  budget_store=budgets, privacy=_Eps(), evidence=evidence,
                  watermarked=["digits"], audit=audit)
    app = Starlette(routes=[*AuditPages(kit, audit, None, None).routes(),
                            *HoldingPages(kit, books).routes(),
                            *ReportPages(kit, reports).routes()])
    with TestClient(app, base_url="http://testserver") as c:
        c.portal.call(setup)  # type: ignore[union-attr]
        cookie, _ = kit.signer.issue(
            admin="ops", scopes=frozenset({"audit:read", "risk:read"}),
            models=frozenset({"*"}), tenants=frozenset({"*"}), now=int(time.time()))
        c.cookies.set(COOKIE_NAME, cookie)
        yield c, records, reports
        c.portal.call(audit.close)  # type: ignore[union-attr]
        c.portal.call(budgets.close)  # type: ignore[union-attr]


def test_audit_search_pages_and_says_what_it_verified(client: Any) -> None:
    c, records, _ = client
    page = c.get("/console/audit", params={"principal": "alice"})
    assert page.status_code == 200, page.text
    assert page.text.count("<tr><td class=\"num\">") == 10
    assert "each matches its hash" in page.text and "intact" in page.text
    assert "before=" in page.text
    older = c.get("/console/audit", params={"principal": "alice", "before": "6"})
    assert older.text.count("<tr><td class=\"num\">") == 2  # records 4 and 2
    assert ("console:audit-search", "ops", 200, None) in records
    bad = c.get("/console/audit", params={"since": "<script>"})
    assert bad.status_code == 400 and "not a date" in bad.text
    assert "<script>" not in bad.text  # the form is reset, nothing echoed unescaped
    assert c.get("/console/audit", params={"status": "5xx"}).text.count(">503<") == 9


def test_budgets_and_epsilon_of_a_principal(client: Any) -> None:
    c, records, _ = client
    page = c.get("/console/budgets", params={"principal": "alice"})
    assert page.status_code == 200
    assert "7 queries, 70 rows" in page.text and "70.0%" in page.text
    assert "0.2500" in page.text and "0.5000" in page.text  # ε: principal, tenant
    assert ("console:budgets", "ops", 200, "alice") in records
    assert c.get("/console/budgets", params={"principal": "x" * 300}).status_code == 400


def test_watermark_holdings_of_a_principal(client: Any) -> None:
    c, _, _ = client
    page = c.get("/console/watermarks", params={"principal": "alice"})
    assert page.status_code == 200
    assert "wm-key-1" in page.text and ">3<" in page.text and ">1<" in page.text
    none = c.get("/console/watermarks", params={"principal": "bob"})
    assert "holds no watermarked answer" in none.text


def test_a_store_that_cannot_answer_is_said_on_each_holdings_page(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    c, _, _ = client

    async def down(*args: object) -> Any:
        raise StoreError("down", store="test")

    monkeypatch.setattr(SqliteBudgetStore, "usage", down)
    monkeypatch.setattr(MemoryEvidenceStore, "held_by", down)
    for path, said in (("/console/budgets", "a budget store cannot answer now"),
                       ("/console/watermarks", "the evidence store cannot answer now")):
        page = c.get(path, params={"principal": "alice"})
        assert page.status_code == 503 and said in page.text, path
        assert "alice" in page.text  # the principal looked up stays in the form
    monkeypatch.setattr(SqliteAuditStore, "select", down)  # the tenant comes from audit
    page = c.get("/console/budgets", params={"principal": "alice"})
    assert page.status_code == 503 and "a store behind this page cannot answer" in page.text


def test_reports_download_as_attachments_and_never_leave_the_folder(client: Any) -> None:
    c, records, _ = client
    listing = c.get("/console/reports")
    assert "run-1/report.html" in listing.text and "bundle.json" in listing.text
    assert "link.txt" not in listing.text and "outside" not in listing.text
    html = c.get("/console/reports/run-1/report.html")
    assert html.status_code == 200 and html.text == "<script>alert(1)</script>"
    assert html.headers["content-disposition"] == 'attachment; filename="report.html"'
    assert html.headers["content-security-policy"].startswith("sandbox")
    assert html.headers["x-content-type-options"] == "nosniff"
    assert c.get("/console/reports/bundle.json").headers["content-type"] == "application/json"
    for name in ("link.txt", "up/outside.txt", "../outside.txt", "%2e%2e/outside.txt",
                 "run-1/../../outside.txt", ".hidden", "a/b/c"):
        r = c.get(f"/console/reports/{name}")
        assert r.status_code in (400, 404), name
        assert "the server's secret" not in r.text
    assert ("console:report-download", "ops", 200, "run-1/report.html") in records


def test_a_tenant_scoped_admin_cannot_look_up_another_tenants_principal(client: Any) -> None:
    c, _, _ = client
    kit_signer = SessionSigner(SECRET, lifetime_s=600)
    cookie, _ = kit_signer.issue(admin="scoped", scopes=frozenset({"risk:read", "audit:read"}),
                                 models=frozenset({"digits"}), tenants=frozenset({"t2"}),
                                 now=int(time.time()))
    c.cookies.set(COOKIE_NAME, cookie)
    refused = c.get("/console/budgets", params={"principal": "alice"})  # alice is in t1
    assert refused.status_code == 403 and "7 queries" not in refused.text
    assert c.get("/console/watermarks", params={"principal": "alice"}).status_code == 403
    assert c.get("/console/audit", params={"tenant": "t1"}).status_code == 403
    own = c.get("/console/audit")  # defaults to its own model and tenant: none of t1's
    assert own.status_code == 200 and "alice" not in own.text


async def test_a_full_verification_names_the_damage_in_its_record(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    from modelfence.console.chain_verify import ChainVerifier

    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    entries = [Entry(T0 + i, None, "p", "t", "m", "infer", 200, b"{}") for i in range(50)]
    await store.commit(lambda h, c: Batch(link(h, entries)))
    await store.close()
    db = sqlite3.connect(tmp_path / "audit.db")
    db.execute("DELETE FROM modelfence_audit WHERE seq = 20")
    db.commit()
    db.close()
    done: asyncio.Queue[tuple[str, int, dict[str, Any]]] = asyncio.Queue()

    async def finish(admin: str, status: int, details: dict[str, Any]) -> None:
        await done.put((admin, status, details))

    verifier = ChainVerifier(f"sqlite:///{tmp_path / 'audit.db'}", None)
    assert verifier.start("ops", finish)
    assert not verifier.start("other", finish)  # one at a time
    admin, status, details = await asyncio.wait_for(done.get(), 30)
    result = details["verified"]
    assert (admin, status, result["ok"]) == ("ops", 200, False)
    assert (result["damage"]["seq"], result["damage"]["kind"]) == (20, "deleted")
    assert verifier.running is None
