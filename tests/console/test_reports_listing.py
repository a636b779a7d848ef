"""The reports listing's work is bounded whatever the folder holds: the newest files only,
found by looking at a bounded number of entries, the newest runs' folders first."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from modelfence.console import reports
from modelfence.console.kit import ConsoleKit
from modelfence.console.session import COOKIE_NAME, SessionSigner

T0 = 1_800_000_000.0


def _file(path: Path, at: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (at, at))


def _folder(path: Path, at: float) -> None:
    os.utime(path, (at, at))


def test_the_newest_files_are_listed_newest_first(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "MAX_LISTED", 5)
    for i in range(20):  # loose files and runs' folders, in no order of time
        at = T0 + (i * 7) % 20
        _file(tmp_path / f"bundle-{i}.json", at)
        _file(tmp_path / f"run-{i}" / "report.html", at + 0.5)
        _folder(tmp_path / f"run-{i}", at + 0.5)
    files, cut = reports._entries(tmp_path)
    assert not cut
    times = sorted(((T0 + (i * 7) % 20, f"bundle-{i}.json") for i in range(20)), reverse=True)
    runs = sorted(((T0 + (i * 7) % 20 + 0.5, f"run-{i}/report.html") for i in range(20)),
                  reverse=True)
    expected = [name for _, name in sorted([*times, *runs], reverse=True)[:5]]
    assert [f.name for f in files] == expected
    assert files[0].kind == "report (HTML)" and files[0].size == 1


def _runs(root: Path, n: int = 30) -> None:
    """`n` runs of 5 files each, run k written at T0 + 10 k (its folder dated by its last)."""
    for run in range(n):
        folder = root / f"run-{run:02d}"
        for j in range(5):
            _file(folder / f"part-{j}.json", T0 + run * 10 + j)
        _folder(folder, T0 + run * 10 + 4)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    looked: list[str] = []
    real = os.scandir

    def counting(path: str | Path) -> Any:
        looked.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    return looked


def test_a_huge_folder_is_looked_at_only_in_part_newest_runs_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "MAX_SCANNED", 60)
    monkeypatch.setattr(reports, "MAX_LISTED", 100)
    _runs(tmp_path)  # 30 folders and 150 files: more entries than may be looked at
    looked = _counting(monkeypatch)
    files, cut = reports._entries(tmp_path)
    assert cut
    assert len(looked) <= 1 + 60 // 5  # the top folder and a bounded number of runs
    # those looked into are the newest runs: the newest files are all there
    assert [f.name for f in files[:10]] == [f"run-{r}/part-{j}.json" for r in (29, 28)
                                            for j in range(4, -1, -1)]


def test_once_the_newest_are_found_older_runs_are_not_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "MAX_LISTED", 10)
    _runs(tmp_path)
    looked = _counting(monkeypatch)
    files, cut = reports._entries(tmp_path)
    assert not cut and len(looked) == 1 + 2  # the top folder, runs 29 and 28
    assert [f.name for f in files] == [f"run-{r}/part-{j}.json" for r in (29, 28)
                                       for j in range(4, -1, -1)]


def test_the_listing_page_says_when_it_stopped(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "MAX_SCANNED", 3)
    monkeypatch.setattr(reports, "MAX_LISTED", 2)
    for i in range(5):
        _file(tmp_path / f"b-{i}.json", T0 + i)
    files, cut = reports._entries(tmp_path)
    assert cut and len(files) == 2

    async def record(*args: Any) -> None:
        return None

    kit = ConsoleKit(SessionSigner(b"r" * 32, lifetime_s=600), record, page_size=10)
    app = Starlette(routes=reports.ReportPages(kit, tmp_path).routes())
    with TestClient(app, base_url="http://testserver") as c:
        cookie, _ = kit.signer.issue(admin="ops", scopes=frozenset({"audit:read"}),
                                     models=frozenset({"*"}), tenants=frozenset({"*"}),
                                     now=int(time.time()))
        c.cookies.set(COOKIE_NAME, cookie)
        page = c.get("/console/reports")
    assert page.status_code == 200
    assert "holds more than 3 entries" in page.text and "The newest 2 files" in page.text
