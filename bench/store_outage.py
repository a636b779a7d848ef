"""A PostgreSQL outage under load: how long a refused request waits, what the log says.

One `modelfence serve` (one worker, log level INFO) keeps its API keys and extraction
budgets on PostgreSQL, reached through a loopback proxy (tests/tcp_proxy.py) that the
bench cuts — open connections reset, new ones refused — for `--outage` seconds and then
restores. A few keep-alive connections send one-row inferences at `--rate` requests per
second in all, before, during and after the outage. Reported:

- before: throughput and p50/p99 of the answers;
- during: how many requests, their statuses, p50/p99/max latency of the refusals (the
  target: none waits more than 100 ms), throughput of the answers (refusals included);
- readiness: the slowest `/v2/health/ready` during the outage (Kubernetes waits 1 s);
- recovery: seconds from the restore to the first 200;
- the log: lines written during the outage, and how many of them are WARNING or ERROR.

    .venv/bin/python bench/store_outage.py [--outage 60] [--rate 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.outage_support import proxied_postgres, scratch_database  # noqa: E402
from tests.support import digits_rows, infer_body, train_digits  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

from outage_load import DEFAULT_PG, add_load_args, client, count_statuses  # noqa: E402
from servers import HOST, _modelfence, free_port, spawn, wait_http  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_args(p)
    p.add_argument("--pg", default=DEFAULT_PG)
    p.add_argument("--audit-on-pg", action="store_true",
                   help="the audit log on the same PostgreSQL too (else a local JSONL file)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--keep", type=Path, help="keep the gateway's folder (log, config) here")
    return p.parse_args(argv)


async def readiness_probe(url: str, start: float, until: float,
                          out: list[tuple[float, int, float]]) -> None:
    """`/v2/health/ready` every half second, as a Kubernetes probe would ask."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        while time.monotonic() < until:
            started = time.monotonic()
            async with session.get(f"{url}/v2/health/ready") as r:
                await r.read()
                out.append((started, r.status, time.monotonic() - started))
            await asyncio.sleep(0.5)


def ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def window(answers: list[tuple[float, int, float]], start: float, end: float
           ) -> dict[str, Any]:
    inside = [a for a in answers if start <= a[0] < end]
    statuses = count_statuses(inside)
    refusals = [a[2] for a in inside if a[1] == 503]
    answered = [a[2] for a in inside if a[1] == 200]
    return {"requests": len(inside), "statuses": statuses,
            "throughput_rps": round(len(inside) / (end - start), 1),
            "answered_p50_ms": ms(answered, 50), "answered_p99_ms": ms(answered, 99),
            "refusal_p50_ms": ms(refusals, 50), "refusal_p99_ms": ms(refusals, 99),
            "refusal_max_ms": round(max(refusals) * 1000, 2) if refusals else None,
            "refusals_over_100ms": sum(1 for r in refusals if r > 0.1)}


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    with scratch_database(args.pg, "modelfence_outage_bench") as direct, ExitStack() as stack:
        proxy, url = stack.enter_context(proxied_postgres(direct))
        model = train_digits(folder)["skops"]
        port, admin_port = free_port(), free_port()
        (folder / "secret").write_text(secrets.token_urlsafe(48))
        (folder / "admin-token").write_text(secrets.token_urlsafe(24))
        config = folder / "modelfence.yaml"
        config.write_text(yaml.safe_dump({
            "server": {"host": HOST, "port": port, "admin_listen": f"{HOST}:{admin_port}"},
            "secret_file": "secret", "admin": {"token_file": "admin-token"},
            "stores": {"keys": url}, "key_cache_ttl_s": 1.0,
            "audit": {"sink": url if args.audit_on_pg else "jsonl:///audit.jsonl"},
            "quotas": {"budget_store": url,
                       "budgets": [{"queries": 100_000_000, "period": "month"}]},
            "models": [{"name": "digits", "backend": {"type": "skops", "path": str(model)}}],
        }, sort_keys=False))
        log = folder / "gateway.log"
        proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config",
                             str(config)], log)
        gateway = f"http://{HOST}:{port}"
        wait_http(f"{gateway}/v2/health/live", proc, log)
        keys = [json.loads(_modelfence(
            "keys", "create", "--config", str(config), "--principal", f"bench-{i}",
            "--tenant", "bench", "--model", "digits", "--json"))["key"]
            for i in range(args.connections)]
        body = json.dumps(infer_body(digits_rows(1))).encode()
        return asyncio.run(measure(args, proxy, gateway, keys, body, log))


async def measure(args: argparse.Namespace, proxy: TcpProxy, gateway: str, keys: list[str],
                  body: bytes, log: Path) -> dict[str, Any]:
    answers: list[tuple[float, int, float]] = []
    ready: list[tuple[float, int, float]] = []
    t0 = time.monotonic()
    cut_at = t0 + args.before
    restore_at = cut_at + args.outage
    until = restore_at + args.after
    interval = args.connections / args.rate
    infer_url = f"{gateway}/v2/models/digits/infer"
    load = [asyncio.ensure_future(client(infer_url, k, body, interval, until, answers))
            for k in keys]
    probe = asyncio.ensure_future(readiness_probe(gateway, cut_at + 1.0, restore_at, ready))
    await asyncio.sleep(max(0.0, cut_at - time.monotonic()))
    log_at_cut = log.stat().st_size
    await asyncio.to_thread(proxy.cut)
    await asyncio.sleep(max(0.0, restore_at - time.monotonic()))
    await asyncio.to_thread(proxy.restore)
    log_at_restore = log.stat().st_size
    await asyncio.gather(*load, probe)
    with log.open("rb") as f:
        f.seek(log_at_cut)
        during_log = f.read(log_at_restore - log_at_cut).decode(errors="replace").splitlines()
        after_log = f.read().decode(errors="replace").splitlines()
    first_200 = min((a[0] + a[2] for a in answers if a[0] >= restore_at and a[1] == 200),
                    default=None)
    return {
        "rate_rps": args.rate, "connections": args.connections, "outage_s": args.outage,
        "audit": "postgresql" if args.audit_on_pg else "jsonl",
        "before": window(answers, t0 + 1.0, cut_at),
        "during": window(answers, cut_at, restore_at),
        "after": window(answers, restore_at, until),
        "readiness_during_max_ms": round(max(r[2] for r in ready) * 1000, 2) if ready else None,
        "readiness_during_statuses": sorted({r[1] for r in ready}),
        "recovery_s": round(first_200 - restore_at, 2) if first_200 else None,
        "log_lines_during": len(during_log),
        "log_warning_error_lines_during": [li for li in during_log
                                           if " WARNING " in li or " ERROR " in li],
        "log_lines_after": [li for li in after_log if " INFO " in li or " WARNING " in li
                            or " ERROR " in li][:10],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args, args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="mf-outage-") as tmp:
            result = run(args, Path(tmp))
    print(json.dumps(result, indent=2))
    during = result["during"]
    print(f"\nduring the {args.outage:g} s outage: {during['requests']} requests, "
          f"{during['throughput_rps']} req/s, refusals p50 {during['refusal_p50_ms']} ms, "
          f"p99 {during['refusal_p99_ms']} ms, max {during['refusal_max_ms']} ms; "
          f"readiness max {result['readiness_during_max_ms']} ms; "
          f"{result['log_lines_during']} log lines "
          f"({len(result['log_warning_error_lines_during'])} WARNING/ERROR); "
          f"recovered {result['recovery_s']} s after the restore")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if during["refusals_over_100ms"]:
        sys.exit(f"{during['refusals_over_100ms']} refusals waited more than 100 ms")


if __name__ == "__main__":
    main()
