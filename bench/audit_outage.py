"""A PostgreSQL outage under load: does every answered call keep its audit record?

One `modelfence serve` writes its audit log to PostgreSQL through a loopback proxy
(tests/tcp_proxy.py) that the bench cuts — open connections reset, new ones refused — for
`--outage` seconds and then restores. A few keep-alive connections send one-row inferences
at `--rate` requests per second in all, before, during and after the outage. API keys are
on the same PostgreSQL (the one-database deployment: calls during the outage are refused,
and those refusals are audited too), or with `--keys-local` in a local SQLite file (calls
are answered during the outage, so every record of it goes through the spill).

After the load, the bench waits for the spill to drain, stops the gateway, and counts the
inference audit records in PostgreSQL (its own database) by status, against the answers the
clients received by status; it runs `modelfence audit verify`. Reported: answers and
records by status (they must be equal), records spilled and replayed, the spill's peak,
seconds from the restore to an empty spill, throughput and p99 before/during/after.

    .venv/bin/python bench/audit_outage.py [--outage 60] [--rate 50] [--keys-local] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.outage_support import proxied_postgres, scratch_database  # noqa: E402
from tests.support import digits_rows, infer_body, train_digits  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

from outage_load import DEFAULT_PG, Answer, add_load_args, client, count_statuses  # noqa: E402
from servers import HOST, _modelfence, free_port, spawn, wait_http  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_args(p)
    p.add_argument("--keys-local", action="store_true",
                   help="API keys in local SQLite: calls are answered during the outage")
    p.add_argument("--durability", choices=["batched", "strict"], default="batched")
    p.add_argument("--pg", default=DEFAULT_PG)
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


def metrics(admin: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as r:  # noqa: S310 (loopback)
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^(modelfence_audit_\w+|modelfence_store_errors_total\{store=\"audit\"\}) (\S+)$",
        text, re.MULTILINE)}


async def spill_watch(admin: str, until: float, peak: dict[str, float]) -> None:
    while time.monotonic() < until:
        m = await asyncio.to_thread(metrics, admin)
        for name in ("modelfence_audit_spill_records", "modelfence_audit_spill_bytes"):
            peak[name] = max(peak.get(name, 0.0), m.get(name, 0.0))
        await asyncio.sleep(0.5)


def window(answers: list[Answer], start: float, end: float) -> dict[str, Any]:
    inside = [a for a in answers if start <= a[0] < end]
    statuses = count_statuses(inside)
    seconds = [a[2] for a in inside]
    return {"requests": len(inside), "statuses": statuses,
            "throughput_rps": round(len(inside) / (end - start), 1),
            "p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 2) if seconds else None,
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 2) if seconds else None}


def recorded(url: str) -> dict[str, int]:
    """Inference records by status (the database is the bench's own; a call refused for
    want of its key store has no principal, so all are counted)."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT status, count(*) FROM modelfence_audit WHERE action = "
                            "'infer' GROUP BY status").fetchall()
    return {str(s): int(n) for s, n in sorted(rows)}


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    with scratch_database(args.pg, "modelfence_audit_outage") as direct:
        with ExitStack() as stack:
            proxy, url = stack.enter_context(proxied_postgres(direct))
            model = train_digits(folder)["skops"]
            port, admin_port = free_port(), free_port()
            (folder / "secret").write_text(secrets.token_urlsafe(48))
            (folder / "admin-token").write_text(secrets.token_urlsafe(24))
            _modelfence("audit", "keygen", "--out", str(folder / "cp.pem"))
            config = folder / "modelfence.yaml"
            config.write_text(yaml.safe_dump({
                "server": {"host": HOST, "port": port, "admin_listen": f"{HOST}:{admin_port}"},
                "secret_file": "secret", "admin": {"token_file": "admin-token"},
                "stores": {"keys": "sqlite:///keys.db" if args.keys_local else url},
                "key_cache_ttl_s": 1.0,
                "audit": {"sink": url, "checkpoint_key_file": "cp.pem",
                          "durability": args.durability},
                "models": [{"name": "digits", "backend": {"type": "skops", "path": str(model)}}],
            }, sort_keys=False))
            log = folder / "gateway.log"
            proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config",
                                 str(config)], log)
            gateway, admin = f"http://{HOST}:{port}", f"http://{HOST}:{admin_port}"
            wait_http(f"{gateway}/v2/health/live", proc, log)
            principals = [f"bench-{i}-{secrets.token_hex(3)}" for i in range(args.connections)]
            keys = [json.loads(_modelfence(
                "keys", "create", "--config", str(config), "--principal", p,
                "--tenant", "bench", "--model", "digits", "--json"))["key"] for p in principals]
            body = json.dumps(infer_body(digits_rows(1))).encode()
            result = asyncio.run(measure(args, proxy, gateway, admin, keys, body))
            drained = time.monotonic()
            while metrics(admin).get("modelfence_audit_spill_records", 0) > 0:
                if time.monotonic() - drained > 120:
                    break
                time.sleep(0.2)
            result["spill_drained_s_after_load"] = round(time.monotonic() - drained, 2)
            result["metrics"] = metrics(admin)
            proc.terminate()
            proc.wait(timeout=30)
            log_text = log.read_text()
        result["recorded_by_status"] = recorded(direct)
        result["lost"] = {
            status: n - result["recorded_by_status"].get(status, 0)
            for status, n in result["answered_by_status"].items() if status != "0"}
        verify = subprocess.run(
            [sys.executable, "-m", "modelfence", "audit", "verify", "--config", str(config),
             "--store", direct, "--public-key", str(folder / "cp.pem"), "--json"],
            capture_output=True, text=True, timeout=300)
        report = json.loads(verify.stdout) if verify.stdout.strip().startswith("{") else {}
        result["verify"] = {"exit": verify.returncode, "ok": report.get("ok"),
                            "records": report.get("records"),
                            "pending_replay": report.get("pending_replay"),
                            "signatures_checked": report.get("signatures_checked")}
        result["log_audit_lines"] = [li for li in log_text.splitlines()
                                     if "modelfence.audit" in li and (" ERROR " in li
                                                                       or " WARNING " in li)]
        return result


async def measure(args: argparse.Namespace, proxy: TcpProxy, gateway: str, admin: str,
                  keys: list[str], body: bytes) -> dict[str, Any]:
    answers: list[Answer] = []
    peak: dict[str, float] = {}
    t0 = time.monotonic()
    cut_at = t0 + args.before
    restore_at = cut_at + args.outage
    until = restore_at + args.after
    interval = args.connections / args.rate
    load = [asyncio.ensure_future(client(f"{gateway}/v2/models/digits/infer", k, body,
                                         interval, until, answers)) for k in keys]
    watch = asyncio.ensure_future(spill_watch(admin, until, peak))
    await asyncio.sleep(max(0.0, cut_at - time.monotonic()))
    await asyncio.to_thread(proxy.cut)
    await asyncio.sleep(max(0.0, restore_at - time.monotonic()))
    await asyncio.to_thread(proxy.restore)
    await asyncio.gather(*load, watch)
    by_status = count_statuses(answers)
    return {"rate_rps": args.rate, "connections": args.connections, "outage_s": args.outage,
            "durability": args.durability,
            "keys": "sqlite (local)" if args.keys_local else "postgresql (same database)",
            "answered_by_status": dict(sorted(by_status.items())),
            "before": window(answers, t0 + 1.0, cut_at),
            "during": window(answers, cut_at, restore_at),
            "after": window(answers, restore_at, until),
            "spill_peak": peak}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mf-audit-outage-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result, indent=2))
    answered = sum(n for s, n in result["answered_by_status"].items() if s != "0")
    recorded_n = sum(result["recorded_by_status"].values())
    m = result["metrics"]
    print(f"\n{args.outage:g} s outage at {args.rate:g} req/s, keys on {result['keys']}: "
          f"{answered} answers, {recorded_n} audit records "
          f"(answers by status {result['answered_by_status']}, records "
          f"{result['recorded_by_status']}); spilled "
          f"{m.get('modelfence_audit_spilled_records_total', 0):.0f}, replayed "
          f"{m.get('modelfence_audit_replayed_records_total', 0):.0f}, peak spill "
          f"{result['spill_peak'].get('modelfence_audit_spill_bytes', 0):,.0f} bytes; verify "
          f"{'ok' if result['verify']['ok'] else 'NOT ok'} ({result['verify']['records']} "
          "records)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if any(result["lost"].values()) or not result["verify"]["ok"]:
        sys.exit(f"lost records: {result['lost']}; verify: {result['verify']}")


if __name__ == "__main__":
    main()
