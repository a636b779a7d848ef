"""The models page counts what the admin may see: an admin of every tenant, every caller;
a tenant's admin, only its tenants' principals (by their keys) and its tenants, said on the
page, so that neither the counts nor the bands' populations tell of other tenants."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from modelfence.audit.sinks import audit_sink_from_url
from modelfence.config.audit import AuditSettings
from modelfence.console.inv_actions import investigation_routes
from modelfence.console.investigate import Investigation
from modelfence.console.kit import ConsoleKit
from modelfence.console.session import COOKIE_NAME, SessionSigner
from modelfence.monitor.pins import PinBook
from modelfence.monitor.service import band_counts
from modelfence.monitor.verdict import Risk

BANDS = [(0.0, "full"), (0.5, "labels")]
#: principal -> (tenant, risk): t1 holds mallory (flagged) and bob; t2 holds eve and zed
PRINCIPALS = {"mallory": ("t1", Risk(0.9, True, 50)), "bob": ("t1", Risk(0.1, False, 5)),
              "eve": ("t2", Risk(0.6, True, 20)), "zed": ("t2", Risk(0.7, True, 9))}
TENANTS = {"t1": Risk(0.4, False, 55), "t2": Risk(0.8, True, 29), "t3": Risk(0.0, False, 1)}


@dataclass
class _Key:
    principal: str
    tenant: str


class _Keys:
    async def records(self) -> list[_Key]:
        return [_Key(p, t) for p, (t, _) in PRINCIPALS.items()]


class _Table:
    """A monitor's table as the page reads it (`Monitor.standing`, `count`, `top`)."""

    def _rows(self, kind: str) -> dict[str, Risk]:
        return ({p: r for p, (_, r) in PRINCIPALS.items()} if kind == "principal"
                else dict(TENANTS))

    def standing(self, kind: str) -> Iterator[Risk]:
        return iter(self._rows(kind).values())

    def count(self, kind: str) -> int:
        return len(self._rows(kind))

    def top(self, kind: str, n: int, keep: Callable[[str], bool] | None = None
            ) -> list[tuple[str, Risk]]:
        rows = [(k, r) for k, r in self._rows(kind).items() if keep is None or keep(k)]
        return heapq.nlargest(n, rows, key=lambda kr: kr[1].score)


class _Monitor:
    def __init__(self) -> None:
        self.monitors = {"m": _Table()}
        self.pins = PinBook()
        self.pin_bands = {"m": list(BANDS)}

    def bands(self, model: str) -> list[tuple[float, str]]:
        return list(BANDS)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, ConsoleKit]]:
    async def record(action: str, admin: str, status: int, request: Request,
                     target: str | None, details: Any) -> None:
        return None

    kit = ConsoleKit(SessionSigner(b"m" * 32, lifetime_s=600), record, page_size=10)
    sink = audit_sink_from_url(f"sqlite:///{tmp_path}/audit.db",
                               AuditSettings(durability="strict"))
    inv = Investigation(kit, cast(Any, _Monitor()), cast(Any, _Keys()), sink)
    routes, _ = investigation_routes(inv)
    with TestClient(Starlette(routes=routes), base_url="http://testserver") as c:
        yield c, kit


def _page(c: TestClient, kit: ConsoleKit, tenants: set[str]) -> str:
    cookie, _ = kit.signer.issue(admin="desk", scopes=frozenset({"risk:read"}),
                                 models=frozenset({"*"}), tenants=frozenset(tenants),
                                 now=int(time.time()))
    c.cookies.set(COOKIE_NAME, cookie)
    page = c.get("/console/models")
    assert page.status_code == 200
    return page.text


def _bands(text: str) -> list[int]:
    body = text.split("<tbody>")[1].split("</tbody>")[0]
    return [int(row.split('<td class="num">')[2].split("<")[0])
            for row in body.split("<tr>")[1:]]


def test_an_admin_of_every_tenant_counts_every_caller(client: Any) -> None:
    c, kit = client
    text = _page(c, kit, {"*"})
    assert "4 principals and 3 tenants watched; 3 principals flagged now" in text
    assert "of your tenants" not in text
    assert _bands(text) == band_counts(BANDS, np.array([0.9, 0.1, 0.6, 0.7])) == [1, 3]


def test_a_tenant_s_admin_counts_its_own_tenants_only(client: Any) -> None:
    c, kit = client
    text = _page(c, kit, {"t1"})
    assert "2 principals and 1 tenants watched of your tenants; 1 principals flagged" in text
    assert _bands(text) == [1, 1]  # bob in full, mallory in labels; eve and zed not counted
    both = _page(c, kit, {"t1", "t2"})
    assert "4 principals and 2 tenants watched of your tenants; 3 principals flagged" in both
