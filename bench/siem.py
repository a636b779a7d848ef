"""Alerts to the SIEM: how long an alert takes to reach its collector, and whether a long
collector outage loses any.

In one process, a `Siem` (the gateway's own) sends findings to a real rsyslogd (Debian's,
imtcp on loopback, writing to a file) and to a Splunk-HEC-shaped receiver (aiohttp on
loopback). Latency: `--alerts` findings one at a time, from `emit` to the line in
rsyslogd's file and to the receiver's handler (same clock). Outage: both collectors are
stopped for `--outage` seconds while findings are emitted at `--rate` per second, then
started again; counted: findings emitted, distinct ones each collector received, repeats,
the spool's peak and the seconds from the collectors' return to the last delivery.

    .venv/bin/python bench/siem.py [--alerts 200] [--outage 60] [--rate 5] [--save F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.rsyslog_daemon import Rsyslog, require_rsyslogd  # noqa: E402
from tests.siem.receiver import Collector  # noqa: E402

from modelfence.config.siem import SiemSettings  # noqa: E402
from modelfence.kernel.metrics import GatewayMetrics  # noqa: E402
from modelfence.risk import Alert  # noqa: E402
from modelfence.siem import Siem  # noqa: E402
from modelfence.siem.finding import Finding, from_risk_alert  # noqa: E402
from results import result, save  # noqa: E402

COLUMNS = [{"key": "measure", "title": "measure"},
           {"key": "collector", "title": "collector"},
           {"key": "alerts", "title": "alerts"},
           {"key": "p50_ms", "title": "p50 ms", "format": "{:.1f}"},
           {"key": "p99_ms", "title": "p99 ms", "format": "{:.1f}"},
           {"key": "max_ms", "title": "max ms", "format": "{:.1f}"},
           {"key": "delivered", "title": "delivered"},
           {"key": "lost", "title": "lost"},
           {"key": "repeated", "title": "repeated"},
           {"key": "drain_s", "title": "s to deliver after return", "format": "{:.1f}"}]


def finding(i: int) -> Finding:
    return from_risk_alert(Alert(model="digits", kind="principal", subject=f"thief{i}",
                                 tenant="shady", risk=0.95, queries=40,
                                 explanation="uniform rows 0.95"), llm=False)


def build(folder: Path, daemon: Rsyslog, hec: Collector, metrics: GatewayMetrics) -> Siem:
    token = folder / "token"
    token.write_text("bench-token")
    return Siem(SiemSettings.model_validate({
        "destinations": [
            {"type": "syslog", "name": "rsyslog", "host": "127.0.0.1", "port": daemon.port},
            {"type": "hec", "name": "hec", "url": hec.url, "token_file": str(token)}],
        "spool_dir": str(folder / "spool")}), metrics)


def syslog_uids(daemon: Rsyslog) -> list[str]:
    return [orjson.loads(line[line.index("] {") + 2:])["metadata"]["uid"]
            for line in daemon.lines()]


def hec_uids(hec: Collector) -> list[str]:
    return [orjson.loads(line)["event"]["metadata"]["uid"]
            for r in hec.received for line in r.body.split(b"\n")]


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def latency(siem: Siem, daemon: Rsyslog, hec: Collector, n: int) -> list[dict[str, Any]]:
    syslog_ms, hec_ms = [], []
    for i in range(n):
        base_size, base_hec = size(daemon.output), len(hec.received)
        sent = time.perf_counter()
        siem.emit(finding(i))
        got_syslog = got_hec = None
        while got_syslog is None or got_hec is None:
            now = time.perf_counter()
            if got_syslog is None and size(daemon.output) > base_size:
                got_syslog = now
            if got_hec is None and len(hec.received) > base_hec:
                got_hec = hec.received[base_hec].at
            if now - sent > 10:
                raise RuntimeError(f"alert {i} not delivered within 10 s")
            await asyncio.sleep(0.0005)
        syslog_ms.append((got_syslog - sent) * 1000)
        hec_ms.append((got_hec - sent) * 1000)
        await asyncio.sleep(0.01)
    return [{"measure": "latency", "collector": name, "alerts": n,
             "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(pct(ms, 0.99), 2),
             "max_ms": round(max(ms), 2)}
            for name, ms in (("rsyslogd (TCP)", syslog_ms), ("Splunk HEC (HTTP)", hec_ms))]


async def outage(siem: Siem, daemon: Rsyslog, hec: Collector, metrics: GatewayMetrics,
                 seconds: float, rate: float, start: int) -> list[dict[str, Any]]:
    before_syslog, before_hec = set(syslog_uids(daemon)), set(hec_uids(hec))
    await asyncio.to_thread(daemon.stop)
    await hec.stop()
    emitted: list[str] = []
    peak = 0.0
    ends = time.monotonic() + seconds
    i = start
    while time.monotonic() < ends:
        f = finding(i)
        siem.emit(f)
        emitted.append(f.uid)
        i += 1
        peak = max(peak, sum(metrics.registry.get_sample_value(
            "modelfence_siem_spool_bytes", {"destination": d}) or 0 for d in ("rsyslog", "hec")))
        await asyncio.sleep(1 / rate)
    back = time.monotonic()
    await asyncio.to_thread(daemon.start)
    await hec.start()
    if not await siem.flush(60):
        raise RuntimeError("the spool did not drain within 60 s of the collectors' return")
    want = set(emitted)
    deadline = time.monotonic() + 10
    while not want <= set(syslog_uids(daemon)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    drained = time.monotonic() - back
    print(f"outage: {len(emitted)} alerts emitted, spool peak {peak / 1024:.0f} KiB")
    rows = []
    for name, uids, before in (("rsyslogd (TCP)", syslog_uids(daemon), before_syslog),
                               ("Splunk HEC (HTTP)", hec_uids(hec), before_hec)):
        mine = [u for u in uids if u not in before]
        rows.append({"measure": f"{seconds:.0f} s outage", "collector": name,
                     "alerts": len(emitted), "delivered": len(want & set(mine)),
                     "lost": len(want - set(mine)), "repeated": len(mine) - len(set(mine)),
                     "drain_s": round(drained, 2)})
    return rows


async def run(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    daemon = Rsyslog(folder / "rsyslog").start()
    hec = Collector()
    await hec.start()
    metrics = GatewayMetrics()
    siem = build(folder, daemon, hec, metrics)
    await siem.start()
    try:
        rows = await latency(siem, daemon, hec, args.alerts)
        for r in rows:
            print(f"latency {r['collector']}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f}"
                  f" ms, max {r['max_ms']:.1f} ms")
        if args.outage > 0:
            rows += await outage(siem, daemon, hec, metrics, args.outage, args.rate,
                                 args.alerts)
            for r in rows[2:]:
                print(f"outage {r['collector']}: {r['delivered']}/{r['alerts']} delivered, "
                      f"{r['lost']} lost, {r['repeated']} repeated, all in {r['drain_s']:.1f}"
                      " s after the return")
    finally:
        await siem.stop()
        await hec.stop()
        daemon.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alerts", type=int, default=200, help="alerts timed one at a time")
    p.add_argument("--outage", type=float, default=60.0, help="seconds both collectors are "
                   "down (0: no outage)")
    p.add_argument("--rate", type=float, default=5.0, help="alerts per second meanwhile")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs "
                   "render (bench/results.py; e.g. bench/published/siem-DATE.json)")
    args = p.parse_args(argv)
    require_rsyslogd()
    with tempfile.TemporaryDirectory(prefix="modelfence-siem-bench-") as tmp:
        rows = asyncio.run(run(args, Path(tmp)))
    if args.save:
        save(args.save, result("siem", "python bench/siem.py " + shlex.join(
            sys.argv[1:] if argv is None else argv), COLUMNS, rows,
            note="in-process Siem; rsyslogd 8.2302 (Debian) and an aiohttp HEC receiver on "
                 "loopback; latency from emit to arrival; fsync on"))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
