"""A scoped admin in the console, tried as an attacker would: what it may not see stays
out of its pages and downloads, and hostile numbers in a query or form are a 4xx, never an
unhandled error. Real SQLite audit log, budget store and pin book; the monitor is a stub
with two models and two bands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from modelfence.audit.record import event_record
from modelfence.audit.sinks import audit_sink_from_url, audit_store_of
from modelfence.config import Budget
from modelfence.config.audit import AuditSettings
from modelfence.console.holdings import Books, HoldingPages
from modelfence.console.inv_actions import investigation_routes
from modelfence.console.investigate import Investigation
from modelfence.console.kit import ConsoleKit
from modelfence.console.records import AuditPages
from modelfence.console.reports import ReportPages
from modelfence.console.session import COOKIE_NAME, SessionSigner
from modelfence.monitor.pins import Pin, PinBook
from modelfence.monitor.verdict import Risk
from modelfence.quota.budgets import SqliteBudgetStore, budget_key, period_bounds

SECRET = b"r" * 32
BANDS = [(0.0, "full"), (0.5, "labels")]


@dataclass
class _Key:
    key_id: str
    principal: str
    tenant: str | None
    models: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    description: str | None = None
    attributes: dict[str, str] | None = None


class _Keys:
    """The key store as the investigation reads it: mallory of t1 (and of t2), eve of t2."""

    async def records(self) -> list[_Key]:
        return [_Key("k1", "mallory", "t1", ("m",)), _Key("k2", "eve", "t2", ("m",)),
                _Key("k3", "mallory", "t2", ("m",))]


class _Table:
    """A model's monitor table with nobody in it (the pages here read pins and records)."""

    def standing(self, kind: str) -> list[Risk]:
        return []

    def count(self, kind: str) -> int:
        return 0

    def top(self, kind: str, n: int, keep: Any = None) -> list[tuple[str, Risk]]:
        return []


class _Monitor:
    """Two monitored models, `m` and `secret`, each with a full and a labels band."""

    def __init__(self) -> None:
        self.monitors = {"m": _Table(), "secret": _Table()}
        self.pins = PinBook()
        self.pin_bands = {"m": list(BANDS), "secret": list(BANDS)}

    def bands(self, model: str) -> list[tuple[float, str]]:
        return list(BANDS)

    def band(self, model: str, score: float) -> str:
        return "labels" if score >= 0.5 else "full"

    def risk(self, model: str, principal: str) -> Risk:
        return Risk(0.3, False, 10)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[TestClient, ConsoleKit, _Monitor]]:
    async def record(action: str, admin: str, status: int, request: Request,
                     target: str | None, details: Any) -> None:
        return None

    kit = ConsoleKit(SessionSigner(SECRET, lifetime_s=600), record, page_size=10)
    sink = audit_sink_from_url(f"sqlite:///{tmp_path}/audit.db",
                               AuditSettings(durability="strict"))
    budgets = SqliteBudgetStore(tmp_path / "budgets.db")
    monitor = _Monitor()
    inv = Investigation(kit, cast(Any, monitor), cast(Any, _Keys()), sink)
    store = audit_store_of(sink)
    books = Books(models=["m", "secret"], budgets=[Budget(queries=10, period="day")],
                  budget_store=budgets, audit=store)
    routes, _ = investigation_routes(inv)
    app = Starlette(routes=[*routes, *HoldingPages(kit, books).routes(),
                            *AuditPages(kit, store, None, None).routes()])

    async def setup() -> None:
        await sink.open()
        await budgets.open()
        for model in ("m", "secret"):
            await sink.write(event_record(action="infer", reason="answered",
                                          principal="mallory", tenant="t1", model=model))
        await sink.write(event_record(action="alert:monitor", reason="ood", principal="mallory",
                                      tenant="t1", model="m", risk=0.8))
        await sink.write(event_record(action="alert:monitor", reason="ood", principal="mallory",
                                      tenant="t2", model="m", risk=0.9))
        await sink.write(event_record(action="infer", reason="answered", principal="eve",
                                      tenant="t2", model="m"))
        period, _ = period_bounds("day", datetime.now(UTC))
        await budgets.reserve(budget_key(0, "eve", "m", period), 7, 7, None, None)
        await monitor.pins.put(Pin("m", "eve", "labels", 0.5, time.time() + 3600, "ops"))

    async def teardown() -> None:
        await sink.close()
        await budgets.close()

    with TestClient(app, base_url="http://testserver") as c:
        c.portal.call(setup)  # type: ignore[union-attr]
        yield c, kit, monitor
        c.portal.call(teardown)  # type: ignore[union-attr]


def _login(c: TestClient, kit: ConsoleKit, *, models: set[str], tenants: set[str],
           scopes: frozenset[str] = frozenset({"risk:read", "risk:write", "alerts:read",
                                               "alerts:write"})) -> str:
    cookie, session = kit.signer.issue(admin="desk", scopes=scopes, models=frozenset(models),
                                       tenants=frozenset(tenants), now=int(time.time()))
    c.cookies.set(COOKIE_NAME, cookie)
    return kit.signer.csrf_token(session)


HOSTILE = ["²", "٣", "9" * 5000, "-1", "1e3", ""]


def test_hostile_numbers_in_queries_and_forms_are_4xx(console: Any) -> None:
    c, kit, _ = console
    csrf = _login(c, kit, models={"*"}, tenants={"*"})
    for bad in HOSTILE:
        for path, params in (("/console/ranking", {"model": "m", "page": bad}),
                             ("/console/alerts", {"before": bad})):
            if bad == "" and path == "/console/alerts":
                continue  # an empty cursor is the first page
            if bad == "" and path == "/console/ranking":
                continue
            r = c.get(path, params=params)
            assert r.status_code == 400, (path, bad[:10], r.status_code)
        for path, form in (("/console/alerts/ack", {"seq": bad}),
                           ("/console/principal/pin", {"model": "m", "principal": "mallory",
                                                       "band": "labels", "hours": bad})):
            r = c.post(path, data={"csrf": csrf, **form}, follow_redirects=False)
            assert 400 <= r.status_code < 500, (path, bad[:10], r.status_code)
    assert c.post("/console/alerts/ack", data={"csrf": csrf, "seq": "\u0660"}).status_code == 404


def test_a_model_scoped_evidence_bundle_holds_no_record_of_other_models(console: Any) -> None:
    c, kit, _ = console
    csrf = _login(c, kit, models={"m"}, tenants={"*"})
    r = c.post("/console/principal/evidence",
               data={"csrf": csrf, "model": "m", "principal": "mallory"})
    assert r.status_code == 200, r.text
    doc = orjson.loads(r.content)
    models = {rec["record"]["model"] for rec in doc["records"]}
    assert models == {"m"}, models  # mallory's calls on "secret" are not this admin's


def test_a_tenant_scoped_admin_sees_no_pin_of_another_tenant(console: Any) -> None:
    c, kit, _ = console
    _login(c, kit, models={"*"}, tenants={"t1"})
    page = c.get("/console/models")
    assert page.status_code == 200
    assert "eve" not in page.text  # eve (t2) is pinned, but not this admin's to see
    _login(c, kit, models={"*"}, tenants={"*"})
    assert "eve" in c.get("/console/models").text


def test_a_tenant_scoped_admin_cannot_name_its_own_tenant_for_another_s_principal(
        console: Any) -> None:
    c, kit, _ = console
    _login(c, kit, models={"*"}, tenants={"t1"})
    for path in ("/console/budgets", "/console/watermarks"):
        assert c.get(path, params={"principal": "zelda-of-t2"}).status_code == 403
        r = c.get(path, params={"principal": "eve", "tenant": "t1"})
        assert r.status_code == 403, (path, r.status_code)
        assert "7 queries" not in r.text
    own = c.get("/console/budgets", params={"principal": "mallory", "tenant": "t1"})
    assert own.status_code == 200


def test_a_scoped_admin_reads_no_report(tmp_path: Path) -> None:
    """Reports and bundles are not labelled with the models and tenants they tell of."""
    async def record(action: str, admin: str, status: int, request: Request,
                     target: str | None, details: Any) -> None:
        return None

    (tmp_path / "evidence-other-tenant.json").write_text('{"principal": "zelda-of-t2"}')
    kit = ConsoleKit(SessionSigner(SECRET, lifetime_s=600), record)
    app = Starlette(routes=ReportPages(kit, tmp_path).routes())
    with TestClient(app, base_url="http://testserver") as c:
        for models, tenants in (({"m"}, {"*"}), ({"*"}, {"t1"})):
            _login(c, kit, models=models, tenants=tenants, scopes=frozenset({"audit:read"}))
            listing = c.get("/console/reports")
            assert listing.status_code == 403 and "evidence-other" not in listing.text
            r = c.get("/console/reports/evidence-other-tenant.json")
            assert r.status_code == 403 and "zelda-of-t2" not in r.text
        _login(c, kit, models={"*"}, tenants={"*"}, scopes=frozenset({"audit:read"}))
        assert c.get("/console/reports/evidence-other-tenant.json").status_code == 200


def test_a_principal_page_shows_a_tenant_s_admin_only_its_tenant_s_keys_and_alerts(
        console: Any) -> None:
    c, kit, _ = console
    _login(c, kit, models={"*"}, tenants={"t1"})
    page = c.get("/console/principal", params={"model": "m", "id": "mallory"})
    assert page.status_code == 200, page.text
    assert "k1" in page.text and ">t1<" in page.text
    assert "k3" not in page.text and ">t2<" not in page.text  # mallory's key and alert in t2


FUZZ = ["²", "9" * 5000, "\x00", "-1", "x" * 60_000, "<script>", "1.2.3", "0001-01-01T00:00+14:00",
        "9999-12-31T23:59:59-14:00", "\u202e"]
PAGES = {"/console/ranking": ("model", "kind", "page"), "/console/principal": ("model", "id"),
         "/console/alerts": ("before",),
         "/console/audit": ("principal", "tenant", "model", "action", "status", "since",
                            "until", "before"),
         "/console/budgets": ("principal", "tenant"), "/console/watermarks": ("principal",
                                                                             "tenant")}


@pytest.mark.parametrize("scoped", [False, True])
def test_no_hostile_query_is_a_server_error(console: Any, scoped: bool) -> None:
    c, kit, _ = console
    _login(c, kit, models={"m"} if scoped else {"*"}, tenants={"t1"} if scoped else {"*"},
           scopes=frozenset({"risk:read", "alerts:read", "audit:read"}))
    for path, names in PAGES.items():
        for name in names:
            for bad in FUZZ:
                r = c.get(path, params={"model": "m", name: bad})
                assert r.status_code < 500, (path, name, bad[:12], r.status_code)
            raw = c.get(f"{path}?model=m&{name}=%ff%fe%80")  # not UTF-8
            assert raw.status_code < 500, (path, name, raw.status_code)
    assert c.get("/console/audit", params={"since": "2026-01-01T00:00",
                                           "before": "5"}).status_code == 400
