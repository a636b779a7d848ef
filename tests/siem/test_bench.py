"""bench/siem.py measures against the real daemon and saves the table the docs render."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ..rsyslog_daemon import require_rsyslogd

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_a_short_run_delivers_everything_and_saves_its_table(tmp_path: Path) -> None:
    require_rsyslogd()
    sys.path.insert(0, str(BENCH))
    try:
        siem, results = importlib.import_module("siem"), importlib.import_module("results")
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "siem.json"
    siem.main(["--alerts", "5", "--outage", "1", "--rate", "10", "--save", str(out)])
    doc = results.load(out)
    latency = [r for r in doc["rows"] if r["measure"] == "latency"]
    outage = [r for r in doc["rows"] if r["measure"] == "1 s outage"]
    assert [r["alerts"] for r in latency] == [5, 5]
    assert all(0 < r["p50_ms"] <= r["max_ms"] < 2000 for r in latency)
    assert len(outage) == 2
    for r in outage:
        assert r["alerts"] >= 5 and r["delivered"] == r["alerts"]
        assert (r["lost"], r["repeated"]) == (0, 0)
    assert results.table(doc)[2].startswith("| latency | rsyslogd (TCP) | 5 |")
