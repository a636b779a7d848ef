"""The assessment report in a real browser (headless Chromium): the plots render, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

from sklearn.datasets import load_digits

from modelfence.redteam import InProcess, Pool, assess, write_report

from ..support import skip_or_fail

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _browser_or_skip() -> None:
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install playwright; never `playwright install`)"
    if problem is None and not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        problem = f"Chromium is not at {CHROMIUM} (apt-get install chromium)"
    if problem is not None:
        skip_or_fail(problem)


def test_report_plots_render_in_chromium(tmp_path: Path, digits_files: dict[str, Path]) -> None:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    x, y = load_digits(return_X_y=True)
    result = assess(digits_files["skops"], pool=Pool("digits/16", x / 16.0, y),
                    attacks=["random", "random:labels"], defenses=["none", "rsig:0.8,1.2"],
                    budgets=[30, 90], seeds=1, thief="lr", executor=InProcess())
    _, html = write_report(result, tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri())
            charts = page.locator("svg")
            assert charts.count() == 3
            for i in range(3):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 200
            first = charts.nth(0)
            assert first.locator("polyline").count() == 2
            assert first.locator("circle").count() == 4
            assert page.get_by_text("no extraction monitor", exact=False).count() == 1
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert requests == [html.as_uri()]  # self-contained: nothing else is fetched
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 20_000
