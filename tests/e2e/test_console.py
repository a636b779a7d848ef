"""The console on a real gateway's admin listener (two workers sharing an SQLite audit log),
driven in headless Chromium: log in with the admin token, see the overview, log out; every
action audited, no secret on any page; a cookie replayed after logout is refused by every
worker."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support import Gateway
from .test_admin_listener import skops_model
from .test_redteam_report import ARGS, CHROMIUM, _browser_or_skip


@pytest.fixture(scope="module")
def console_gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
                    ) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gw-console"), [skops_model(digits_files)],
                 extra={"console": {"enabled": True, "session_lifetime_s": 300},
                        "audit": {"sink": "sqlite:///audit.db"}})
    gw.extra["server"] = {"host": "127.0.0.1", "port": gw.port, "workers": 2,
                          "admin_listen": f"127.0.0.1:{gw.admin_port}"}
    gw.start()
    yield gw
    gw.stop()


def _audit_records(gw: Gateway) -> list[dict[str, object]]:
    db = sqlite3.connect(gw.folder / "audit.db")
    try:
        rows = db.execute("SELECT payload FROM modelfence_audit ORDER BY seq").fetchall()
    finally:
        db.close()
    return [json.loads(payload) for (payload,) in rows]


def _console_records(gw: Gateway, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        records = [r for r in _audit_records(gw) if str(r["action"]).startswith("console:")]
        if len(records) >= count:
            break
        time.sleep(0.1)
    return records


def test_login_overview_logout_in_chromium(console_gateway: Gateway, tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    gw = console_gateway
    secrets_made = [gw.admin_token, (gw.folder / "secret").read_text()]
    bodies: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            first = page.goto(f"{gw.admin_url}/console/")
            assert first is not None and first.ok and page.url.endswith("/console/login")
            headers = first.all_headers()
            assert headers["content-security-policy"].startswith("default-src 'none'")
            assert headers["x-content-type-options"] == "nosniff"
            bodies.append(page.content())
            page.fill("#credential", "not-the-admin-token-at-all-000")
            page.click("button[type=submit]")
            assert "login refused" in page.content()
            page.fill("#credential", gw.admin_token)
            page.click("button[type=submit]")
            page.wait_for_url("**/console/", timeout=5000)
            assert "Logged in as admin" in page.content()
            cookies = page.context.cookies()
            assert cookies and all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies)
            assert all(gw.admin_token not in c["value"] for c in cookies)
            bodies.append(page.content())
            page.screenshot(path=str(tmp_path / "console-overview.png"))
            page.click("text=Log out")
            page.wait_for_url("**/console/login")
            bodies.append(page.content())
        finally:
            browser.close()
    for body in bodies:
        for secret in secrets_made:
            assert secret not in body
    records = _console_records(gw, 3)
    assert [(r["action"], r["status"]) for r in records][-3:] == [
        ("console:login", 401), ("console:login", 303), ("console:logout", 303)]
    for record in records:
        for secret in secrets_made:
            assert secret not in str(record)


def test_login_and_overview_pages_pass_the_browser_checks(console_gateway: Gateway) -> None:
    """No CSP violation (htmx runs under script-src 'self'), no axe violation, no secret."""
    from .console_browser import console_browser

    gw = console_gateway
    with console_browser(gw, [gw.admin_token, (gw.folder / "secret").read_text()]) as browser:
        browser.visit("/console/login", name="login")
        browser.login()
        browser.check("overview")
        assert browser.page.evaluate("typeof htmx") == "object"  # the vendored script ran



def test_a_cookie_replayed_after_logout_is_refused_by_every_worker(
        console_gateway: Gateway) -> None:
    """Logging out on one worker ends the session on both (each request on a new
    connection, so the workers take turns), and a console page with the check stays far
    under its 300 ms target."""
    import httpx

    gw = console_gateway

    def get(path: str, cookie: str) -> httpx.Response:
        with httpx.Client(base_url=gw.admin_url, cookies={"modelfence_console": cookie},
                          follow_redirects=False) as one:  # a new connection each time
            return one.get(path)

    with httpx.Client(base_url=gw.admin_url, follow_redirects=False) as client:
        assert client.post("/console/login",
                           data={"credential": gw.admin_token}).status_code == 303
        cookie = client.cookies["modelfence_console"]
        started = time.perf_counter()
        pages = [get("/console/", cookie) for _ in range(8)]
        page_ms = (time.perf_counter() - started) * 1000 / len(pages)
        assert all(p.status_code == 200 for p in pages) and page_ms < 300, page_ms
        csrf = pages[0].text.split('name="csrf" value="')[1].split('"')[0]
        assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
    for _ in range(8):
        again = get("/console/", cookie)
        assert again.status_code == 303 and again.headers["location"] == "/console/login"
    records = [r for r in _console_records(gw, 2) if r["action"] == "console:logout"]
    assert records and str(records[-1]["key_id"]).startswith("session:")
    assert cookie.split(".")[0] not in str(records[-1])
