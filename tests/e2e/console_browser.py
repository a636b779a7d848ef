"""Driving the console in headless Chromium: log in, visit pages, and check each one the
same way — no secret on the page, no Content-Security-Policy violation or script error, no
accessibility violation found by axe-core (WCAG 2.1 A and AA rules), and a screenshot kept
under `test-artifacts/console/` (or $MODELFENCE_TEST_ARTIFACTS) for a person to look at."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..support import Gateway
from .test_redteam_report import ARGS, CHROMIUM, _browser_or_skip

ARTIFACTS = Path(os.environ.get("MODELFENCE_TEST_ARTIFACTS", "test-artifacts")) / "console"
_AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a",
                                                        "wcag21aa"]},
                "resultTypes": ["violations"]}


class ConsoleBrowser:
    """One signed-in Chromium page on a gateway's console, with the checks every page gets."""

    def __init__(self, page: Any, gateway: Gateway, secrets: list[str]) -> None:
        self.page = page
        self.gateway = gateway
        self.secrets = [s for s in secrets if s]
        self.problems: list[str] = []  # CSP violations, script errors, failed requests
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def login(self, token: str | None = None) -> None:
        self.page.goto(f"{self.gateway.admin_url}/console/login")
        self.page.fill("#credential", token or self.gateway.admin_token)
        self.page.click("button[type=submit]")
        self.page.wait_for_url("**/console/", timeout=10000)

    def visit(self, path: str, *, name: str | None = None) -> Any:
        """Open a console page and check it; answers the response."""
        response = self.page.goto(f"{self.gateway.admin_url}{path}")
        self.check(name or _slug(path))
        return response

    def check(self, name: str) -> None:
        """The current page: no secret, no CSP or script error, axe-clean; screenshot kept."""
        body = self.page.content()
        for secret in self.secrets:
            assert secret not in body, f"a secret is rendered on {name}"
        assert not self.problems, f"{name}: {self.problems}"
        violations = axe_violations(self.page)
        assert not violations, f"{name}: accessibility violations {violations}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def axe_violations(page: Any) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page, one line each (id: first target)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options=_AXE_OPTIONS)
    return [f"{v['id']}: {v['nodes'][0]['target'] if v['nodes'] else ''}"
            for v in results.response["violations"]]


@contextmanager
def console_browser(gateway: Gateway, secrets: list[str]) -> Iterator[ConsoleBrowser]:
    """A fresh headless Chromium with one page on `gateway`'s console (skips without one)."""
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            yield ConsoleBrowser(page, gateway, secrets)
        finally:
            browser.close()


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "console"
