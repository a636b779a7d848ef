"""The console on a real gateway's admin listener, driven in headless Chromium: log in with
the admin token, see the overview, log out; every action audited, no secret on any page."""

from __future__ import annotations

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
                 extra={"console": {"enabled": True, "session_lifetime_s": 300}}).start()
    yield gw
    gw.stop()


def _console_records(gw: Gateway, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        records = [r for r in gw.audit_records() if str(r["action"]).startswith("console:")]
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
