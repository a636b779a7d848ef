"""The console's records pages on a real gateway whose audit log is in PostgreSQL, driven in
headless Chromium: search the audit trail and page through it, see the chain verified
(window, head, a full verification started from the page), budgets and ε, watermark
holdings, and download a red-team report; every page passes the browser checks (no secret,
no CSP or script error, axe-clean, screenshot kept) and every action is in the audit log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sklearn.datasets import load_digits

from modelfence.audit.checkpoint import generate_keypair

from ..support import Gateway, infer_body
from .console_browser import ConsoleBrowser, console_browser

pytestmark = pytest.mark.postgres


@pytest.fixture
def records_gateway(tmp_path: Path, digits_files: dict[str, Path], pg_audit_url: str
                    ) -> Iterator[Gateway]:
    generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub.pem")
    (tmp_path / "wm.secret").write_text("w" * 48)
    reports = tmp_path / "reports"
    (reports / "run-1").mkdir(parents=True)
    (reports / "run-1" / "report.html").write_text("<html><body>stolen 41%</body></html>")
    (reports / "bundle.json").write_text('{"type": "evidence"}')
    models = [{"name": "digits", "backend": {"type": "skops",
                                             "path": str(digits_files["skops"])}}]
    gw = Gateway(tmp_path, models, extra={
        "audit": {"sink": pg_audit_url, "checkpoint_key_file": "audit.pem",
                  "checkpoint_every": 10, "flush_interval_ms": 5},
        "console": {"enabled": True, "page_size": 10, "reports_dir": str(reports)},
        "quotas": {"budget_store": "sqlite:///budgets.db",
                   "budgets": [{"queries": 1000, "period": "day"}]},
        "watermark": {"fraction": 0.08, "fraction_at_risk": None,
                      "keys": [{"id": "k1", "secret_file": "wm.secret"}],
                      "evidence_store": "sqlite:///evidence.db"}}).start()
    yield gw
    gw.stop()


def _console_actions(pg_audit_url: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(pg_audit_url) as conn:
        rows = conn.execute("SELECT action, status, payload FROM modelfence_audit "
                            "WHERE action LIKE 'console:%' ORDER BY seq").fetchall()
    return [(a, s, bytes(p).decode()) for a, s, p in rows]


def _text(browser: ConsoleBrowser) -> str:
    return str(browser.page.inner_text("main"))


def test_records_pages_in_chromium(records_gateway: Gateway, pg_audit_url: str,
                                   tmp_path: Path) -> None:
    gw = records_gateway
    api_key = gw.key(principal="mallory", tenant="acme")
    x, _ = load_digits(return_X_y=True)
    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}) as client:
        for i in range(25):
            rows = (x[i * 4:(i + 1) * 4] / 16.0).tolist()
            r = client.post(f"{gw.url}/v2/models/digits/infer", json=infer_body(rows))
            assert r.status_code == 200, r.text
    secrets = [gw.admin_token, (gw.folder / "secret").read_text(), api_key,
               (gw.folder / "wm.secret").read_text(), (gw.folder / "audit.pem").read_text()]
    with console_browser(gw, secrets) as browser:
        browser.login()
        browser.visit("/console/audit", name="audit")
        text = _text(browser)
        assert "each matches its hash" in text and "signature verified" in text, text
        page = browser.page
        page.fill("#principal", "mallory")
        page.fill("#action", "infer")
        page.click("fieldset button[type=submit]")
        page.wait_for_url("**principal=mallory**")
        browser.check("audit-search")
        first = page.locator("tbody tr").all_inner_texts()
        assert len(first) == 10 and all("mallory" in row for row in first)
        page.click("a[rel=next]")
        page.wait_for_url("**before=**")
        browser.check("audit-older")
        second = page.locator("tbody tr").all_inner_texts()
        assert len(second) == 10 and not set(first) & set(second)
        seqs = [int(row.split()[0]) for row in first + second]
        assert seqs == sorted(seqs, reverse=True)  # newest first, one keyset run

        bad = page.goto(f"{gw.admin_url}/console/audit?since=not-a-date&principal=%3Cb%3E")
        assert bad is not None and bad.status == 400 and "not a date" in _text(browser)
        assert browser.problems == ["console error: Failed to load resource: the server "
                                    "responded with a status of 400 (Bad Request)"]
        browser.problems.clear()  # the 400 itself, as the browser logs it
        browser.check("audit-bad-filter")

        page.goto(f"{gw.admin_url}/console/audit")
        page.click("text=Verify the whole chain now")
        deadline = time.monotonic() + 15
        while "records verified" not in _text(browser):
            assert time.monotonic() < deadline, _text(browser)
            time.sleep(0.3)
            page.goto(f"{gw.admin_url}/console/audit")
        browser.check("audit-verified")

        browser.visit("/console/budgets?principal=mallory", name="budgets")
        assert "25 queries" in _text(browser) and "2.5%" in _text(browser)
        browser.visit("/console/watermarks?principal=mallory", name="watermarks")
        assert "k1" in _text(browser) and "watermark" in _text(browser)
        browser.visit("/console/reports", name="reports")
        with page.expect_download() as download:
            page.click("text=run-1/report.html")
        saved = tmp_path / "downloaded.html"
        download.value.save_as(saved)
        assert saved.read_text() == "<html><body>stolen 41%</body></html>"
        assert not browser.problems
    actions = _console_actions(pg_audit_url)
    seen = {(a, s) for a, s, _ in actions}
    for expected in [("console:login", 303), ("console:audit-search", 200),
                     ("console:audit-verify", 202), ("console:audit-verify", 200),
                     ("console:budgets", 200), ("console:watermarks", 200),
                     ("console:report-download", 200)]:
        assert expected in seen, (expected, seen)
    verified = next(p for a, s, p in actions if (a, s) == ("console:audit-verify", 200))
    assert '"ok":true' in verified
    for _, _, payload in actions:
        for secret in secrets:
            assert secret not in payload
