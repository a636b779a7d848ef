"""Issue 22's "done when", from the console alone, in headless Chromium on a real gateway:
a thief appears at the top of the ranking, its page says why, the engineer pins it to a
stricter band, acknowledges its alert, exports the evidence and revokes its key. The thief
holds a partner key, which a policy pins to full answers whatever its risk: only the
operator's pin changes what it gets. Every action leaves an audit record; every page made
here passes the browser checks (no secret, no CSP error, axe-clean, screenshot kept)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest

from modelfence.audit.checkpoint import generate_keypair, load_public_key
from modelfence.watermark import bundle as evidence

from ..support import Gateway, cli_in_process
from .console_browser import console_browser
from .test_monitor_gateway import ask, digits, monitored_gateway, thief_rows, wait_for

POLICY = """
@id("own-grants")
permit (principal, action in [Action::"infer", Action::"metadata"], resource)
when { principal.models.contains(resource.name) };

@id("partners-see-everything")
@shaping("full")
permit (principal, action == Action::"infer", resource)
when { principal.groups.contains("partners") };
"""


#: Scoped admins: one that may only look, one limited to the tenant "readers".
SCOPED: dict[str, dict[str, Any]] = {
    "viewer": {"token": "viewer-token-" + "v" * 24, "scopes": ["risk:read"]},
    "desk": {"token": "desk-token-" + "d" * 24,
             "scopes": ["risk:read", "risk:write", "alerts:read", "alerts:write"],
             "models": ["digits"], "tenants": ["readers"]}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
            ) -> Iterator[Gateway]:
    gw = monitored_gateway(tmp_path_factory.mktemp("console-inv"), digits_files,
                           policy=POLICY)
    gw.extra["console"] = {"enabled": True, "session_lifetime_s": 300}
    generate_keypair(gw.folder / "audit.pem", gw.folder / "audit.pub")
    gw.extra["audit"] = {**gw.extra["audit"], "checkpoint_key_file": "audit.pem",
                         "checkpoint_every": 20}
    for name in SCOPED:
        (gw.folder / f"{name}-token").write_text(SCOPED[name]["token"])
    gw.extra["admin"] = {"token_file": "admin-token", "tokens": [
        {"name": name, "token_file": f"{name}-token",
         **{k: v for k, v in grant.items() if k != "token"}}
        for name, grant in SCOPED.items()]}
    gw.start()
    yield gw
    gw.stop()


def _partner_key(gw: Gateway, principal: str, tenant: str) -> str:
    out = cli_in_process("keys", "create", "--config", str(gw.config), "--principal",
                         principal, "--tenant", tenant, "--model", "digits", "--group",
                         "partners", "--json")
    return str(json.loads(out)["key"])


def _records(gw: Gateway, principal: str) -> list[dict[str, Any]]:
    out = cli_in_process("audit", "query", "--config", str(gw.config), "--principal",
                         principal, "--limit", "1000", "--json")
    return [r["record"] for r in json.loads(out)["records"]]


def _band(gw: Gateway, key: str, row: np.ndarray[Any, Any]) -> str:
    answer = ask(gw, key, row[None, :])
    assert answer.status_code == 200, answer.text
    return str(answer.json()["parameters"]["shaping"])


def test_an_engineer_finds_explains_pins_and_stops_a_thief(gateway: Gateway,
                                                            tmp_path: Path) -> None:
    gw = gateway
    honest = gw.key(principal="reader", tenant="readers")
    for row in digits()[:15]:
        assert ask(gw, honest, row[None, :]).status_code == 200
    thief = _partner_key(gw, "mallory", "shady")
    rows = thief_rows(80)
    for row in rows[:50]:  # flagged within a few dozen: the partner pin keeps full answers
        assert _band(gw, thief, row) == "full"
    wait_for(lambda: any(r["action"] == "alert:monitor" for r in _records(gw, "mallory")))

    secrets = [gw.admin_token, (gw.folder / "secret").read_text(), thief, honest]
    with console_browser(gw, secrets) as browser:
        page = browser.page
        browser.login()
        browser.visit("/console/models", name="inv-models")
        assert "labels" in page.inner_text("main")
        browser.visit("/console/ranking?model=digits&kind=tenant", name="inv-ranking-tenants")
        browser.visit("/console/ranking?model=digits&kind=principal", name="inv-ranking")
        first = page.locator("#ranking tbody tr").first
        assert "mallory" in first.inner_text() and "flagged" in first.inner_text()
        first.locator("a").click()
        page.wait_for_url("**/console/principal?*")
        browser.check("inv-principal")
        why = page.inner_text("#detectors")
        assert "ood" in why and "flagged" in page.inner_text("#risk")
        assert page.locator("svg.plot title").count() == 1
        assert page.inner_text("#band") == "labels"  # its risk alone would say labels

        page.select_option("#pin-band", "labels")
        page.click("#pin-form button[type=submit]")
        page.wait_for_load_state()
        assert "pinned to labels" in page.inner_text("#pin")
        browser.check("inv-principal-pinned")
        # the pin reaches its very next answer, over the policy's pin to full answers
        assert _band(gw, thief, rows[50]) == "labels"
        assert _band(gw, honest, digits()[20]) == "full"

        page.locator("#alert-table button", has_text="Acknowledge").first.click()
        page.wait_for_load_state()
        assert "acknowledged by admin" in page.inner_text("#alert-table")

        with page.expect_download() as download:
            page.click("#export")
        data = Path(download.value.path()).read_bytes()
        bundle = json.loads(data)
        page.locator("#key-table button", has_text="Revoke").click()
        page.wait_for_load_state()
        assert "revoked" in page.inner_text("#key-table")
        browser.visit("/console/alerts", name="inv-alerts")
        assert "acknowledged" in page.inner_text("#alert-table")

    # signed with the audit checkpoint key, as ownership evidence is, and canonical
    public = load_public_key(gw.folder / "audit.pub")
    assert evidence.problem(bundle, public) is None and evidence.file_problem(data, bundle) is None
    edited = {**bundle, "principal": "someone-else"}
    assert evidence.problem(edited, public) == evidence.EDITED
    (tmp_path / "evidence.json").write_bytes(data)  # the command a recipient runs
    checked = cli_in_process("evidence", "verify", str(tmp_path / "evidence.json"),
                             "--public-key", str(gw.folder / "audit.pub"))
    assert "signature valid" in checked
    assert bundle["principal"] == "mallory" and bundle["chain"]["ok"] is True
    assert bundle["chain"]["head"]["signature"] == "verified"
    assert bundle["chain"]["records_checked"] == len(bundle["records"]) > 50
    assert bundle["alerts"][0]["state"] == "acknowledged"
    assert bundle["explanation"]["flagged"] and bundle["explanation"]["pin"]["band"] == "labels"
    assert any(r["record"]["action"] == "infer" for r in bundle["records"])
    assert all(r["hash_holds"] for r in bundle["records"])
    for secret in secrets:
        assert secret not in json.dumps(bundle)

    # revoked: refused (within the key cache's second)
    deadline = time.monotonic() + 3
    while ask(gw, thief, rows[60][None, :]).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key is still accepted"
        time.sleep(0.2)

    actions = {r["action"]: r for r in _records(gw, "admin")
               if str(r["action"]).startswith("console:")}
    for action in ("console:pin", "console:alert-ack", "console:export-evidence",
                   "console:revoke-key"):
        assert action in actions and actions[action]["status"] < 400, action
    assert actions["console:pin"]["details"]["band"] == "labels"
    assert actions["console:pin"]["key_id"] == "digits/mallory"
    assert actions["console:alert-ack"]["key_id"] == f"alert:{bundle['alerts'][0]['seq']}"
    assert actions["console:revoke-key"]["details"]["principal"] == "mallory"
    for record in actions.values():
        for secret in secrets:
            assert secret not in json.dumps(record)


def test_actions_need_their_scope_and_a_csrf_token(gateway: Gateway) -> None:
    """A form without the session's token is refused (403), recorded, and changes nothing."""
    gw = gateway
    with httpx.Client(base_url=gw.admin_url) as client:
        login = client.post("/console/login", data={"credential": gw.admin_token})
        assert login.status_code in (200, 303)
        refused = client.post("/console/principal/pin", data={
            "model": "digits", "principal": "reader", "band": "labels", "hours": "1"})
        assert refused.status_code == 403
        page = client.get("/console/principal", params={"model": "digits", "id": "reader"})
        assert page.status_code == 200 and "pinned to" not in page.text
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        looser = client.post("/console/principal/pin", data={
            "csrf": csrf, "model": "digits", "principal": "reader", "band": "full",
            "hours": "1"})
        assert looser.status_code == 400  # the lowest band is no pin at all
        unknown = client.get("/console/principal", params={"model": "nope", "id": "reader"})
        assert unknown.status_code == 404
    refusals = [r for r in _records(gw, "admin") if r["action"] == "console:pin"]
    assert [r["status"] for r in refusals][-1:] == [400]


def _session(gw: Gateway, token: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=gw.admin_url)
    assert client.post("/console/login", data={"credential": token}).status_code == 303
    page = client.get("/console/models")
    return client, page.text.split('name="csrf" value="')[1].split('"')[0]


def test_scoped_admins_see_and_change_only_what_they_hold(gateway: Gateway) -> None:
    gw = gateway
    reader = gw.key(principal="reading-room", tenant="readers")
    for row in digits()[:3]:
        assert ask(gw, reader, row[None, :]).status_code == 200
    bot = gw.key(principal="shady-bot", tenant="shady")
    for row in thief_rows(45, seed=9):  # flagged: an alert of tenant shady
        assert ask(gw, bot, row[None, :]).status_code == 200
    wait_for(lambda: any(r["action"] == "alert:monitor" for r in _records(gw, "shady-bot")))
    alert = next(r for r in _records(gw, "shady-bot") if r["action"] == "alert:monitor")
    seq = next(a["seq"] for a in httpx.get(
        f"{gw.admin_url}/admin/alerts", headers={"Authorization": f"Bearer {gw.admin_token}"}
    ).json()["alerts"] if a["principal"] == "shady-bot")
    assert alert["tenant"] == "shady"
    full, _ = _session(gw, gw.admin_token)
    with closing(full):  # the alert is on the page for an admin of every tenant
        assert "shady-bot" in full.get("/console/alerts").text
    viewer, csrf = _session(gw, SCOPED["viewer"]["token"])
    with closing(viewer):
        page = viewer.get("/console/principal", params={"model": "digits", "id": "shady-bot"})
        assert page.status_code == 200 and "pin-form" not in page.text
        refused = viewer.post("/console/principal/pin", data={
            "csrf": csrf, "model": "digits", "principal": "shady-bot", "band": "labels",
            "hours": "1"})
        assert refused.status_code == 403 and "risk:write" in refused.text
        assert viewer.get("/console/alerts").status_code == 403  # no alerts:read
    desk, csrf = _session(gw, SCOPED["desk"]["token"])
    with closing(desk):
        ranking = desk.get("/console/ranking", params={"model": "digits"}).text
        assert "reading-room" in ranking and "shady-bot" not in ranking
        hidden = desk.get("/console/principal", params={"model": "digits", "id": "shady-bot"})
        assert hidden.status_code == 404
        blocked = desk.post("/console/principal/pin", data={
            "csrf": csrf, "model": "digits", "principal": "shady-bot", "band": "labels",
            "hours": "1"})
        assert blocked.status_code == 404
        alerts = desk.get("/console/alerts")
        assert alerts.status_code == 200 and "shady-bot" not in alerts.text
        assert desk.post("/console/alerts/ack", data={"csrf": csrf, "seq": str(seq)}
                         ).status_code == 404
    assert gw.key(principal="x", tenant="y")  # the gateway still answers its CLI
    refusals = [(r["action"], r["status"]) for r in _records(gw, "admin:token:desk")
                if r["action"] in ("console:pin", "console:alert-ack")]
    assert refusals == [("console:pin", 404), ("console:alert-ack", 404)]
