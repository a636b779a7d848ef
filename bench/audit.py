"""What the tamper-evident audit log costs: append throughput and `audit verify` speed.

For each store (SQLite always, PostgreSQL with --pg) and durability mode, `--concurrency`
tasks write records as fast as the sink lets them; the clock runs from the first write
until `close()` returned, so every record is committed and the head is signed. The table
also shows how long `write()` itself took (what a request's complete phase waits for) and
the CPU the whole process spent per record (event loop, writer task and SQLite's thread).
Then `verify_store` walks the batched log with signature checks.

Records are stand-ins shaped like the gateway's (about 600 bytes of canonical JSON);
assembling the real `AuditRecord` is not part of the sink's cost.

    /tmp/v1/bin/python bench/audit.py --records 200000 [--pg postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from modelfence.audit.checkpoint import CheckpointPolicy, Signer
from modelfence.audit.store import AuditStore, Durability, audit_store_from_url
from modelfence.audit.verify import verify_store
from modelfence.audit.writer import ChainedSink
from results import result, save

TARGET_APPEND_PER_S = 20_000  # SQLite, batched
TARGET_VERIFY_PER_S = 200_000

TEMPLATE: dict[str, Any] = {
    "time": "2025-01-31T12:00:00.123456+00:00", "action": "infer", "model": "digits",
    "tenant": "acme", "key_id": "0123456789abcdef", "source": "10.0.0.7", "status": 200,
    "decision": "allow", "reason": "ok", "policy_ids": ["default-grant"], "latency_ms": 1.734,
    "rows": 1, "risk": 0.0412, "bytes_in": 1311, "bytes_out": 402,
    "input_sha256": "9f" * 32, "output_sha256": "4c" * 32, "inputs": None,
    "trail": [{"guard": "identity", "decision": "allow"}, {"guard": "policy", "decision": "allow"}],
}


class Rec:
    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def to_dict(self) -> dict[str, Any]:
        return {**TEMPLATE, "request_id": f"{self.i:032x}", "principal": f"user-{self.i % 97}"}


async def append(store: AuditStore, durability: Durability, n: int, concurrency: int,
                 signer: Signer) -> dict[str, float]:
    sink = ChainedSink(store, durability=durability, signer=signer,
                       policy=CheckpointPolicy(1000, 60))
    await sink.open()
    waits: list[float] = []

    async def producer(k: int) -> None:
        clock = time.perf_counter
        for i in range(k, n, concurrency):
            t = clock()
            await sink.write(Rec(i))  # type: ignore[arg-type]
            waits.append(clock() - t)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(producer(k) for k in range(concurrency)))
    await sink.close()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu  # every thread: the loop, the writer, SQLite's thread
    assert sink.written == n and sink.lost == 0
    q = statistics.quantiles(waits, n=100)
    return {"records": n, "seconds": seconds, "per_s": n / seconds,
            "cpu_us_per_record": cpu / n * 1e6,
            "write_p50_us": q[49] * 1e6, "write_p99_us": q[98] * 1e6}


async def verify(url: str, public: Any) -> dict[str, float]:
    store = audit_store_from_url(url, create=False)
    await store.open()
    try:
        report = await verify_store(store, public_key=public)
    finally:
        await store.close()
    assert report.ok, report.damage
    return {"records": report.records, "seconds": report.seconds, "per_s": report.rate,
            "checkpoints": report.checkpoints}


async def run(args: argparse.Namespace, folder: Path, console: Console) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    targets = [("sqlite", f"sqlite:///{folder}/batched.db", "batched", args.records),
               ("sqlite", f"sqlite:///{folder}/strict.db", "strict", args.records // 4)]
    schema = f"mf_bench_{secrets.token_hex(4)}"
    if args.pg:
        import psycopg

        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {schema}")
        pg = f"{args.pg}{'&' if '?' in args.pg else '?'}options=-csearch_path%3D{schema}"
        targets += [("postgres", pg, "batched", args.records),
                    ("postgres", pg.replace(schema, schema + "_s"), "strict", args.records // 4)]
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {schema}_s")
    results: dict[str, Any] = {}
    try:
        for kind, url, durability, n in targets:
            console.print(f"append: {kind} {durability}, {n:,} records …")
            store = audit_store_from_url(url, durability=durability)  # type: ignore[arg-type]
            results[f"append {kind} {durability}"] = await append(
                store, durability, n, args.concurrency, signer)  # type: ignore[arg-type]
            if durability == "batched":
                console.print(f"verify: {kind}, {n:,} records …")
                results[f"verify {kind}"] = await verify(url, key.public_key())
    finally:
        if args.pg:
            with psycopg.connect(args.pg, autocommit=True) as c:
                c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                c.execute(f"DROP SCHEMA IF EXISTS {schema}_s CASCADE")
    return results


def show(results: dict[str, Any], console: Console) -> None:
    table = Table("measure", "records", "seconds", "records/s", "CPU µs/record", "write() p50",
                  "write() p99", title="modelfence audit log")
    for name, r in results.items():
        table.add_row(name, f"{r['records']:,}", f"{r['seconds']:.2f}", f"{r['per_s']:,.0f}",
                      f"{r['cpu_us_per_record']:.1f}" if "cpu_us_per_record" in r else "",
                      f"{r['write_p50_us']:.0f} µs" if "write_p50_us" in r else "",
                      f"{r['write_p99_us']:.0f} µs" if "write_p99_us" in r else "")
    console.print(table)
    append_rate = results["append sqlite batched"]["per_s"]
    verify_rate = results["verify sqlite"]["per_s"]
    for what, got, want in (("append, SQLite batched", append_rate, TARGET_APPEND_PER_S),
                            ("verify, SQLite", verify_rate, TARGET_VERIFY_PER_S)):
        mark = "[green]meets[/]" if got >= want else "[red]misses[/]"
        console.print(f"{what}: {got:,.0f} records/s {mark} the target of {want:,}/s")


COLUMNS = [
    {"key": "measure", "title": "measure"},
    {"key": "records_per_s", "title": "records/s", "format": "{:,.0f}"},
    {"key": "cpu_us_per_record", "title": "CPU µs/record", "format": "{:,.1f}"},
    {"key": "write_p50_us", "title": "`write()` p50", "format": "{:,.0f} µs"},
    {"key": "write_p99_us", "title": "`write()` p99", "format": "{:,.0f} µs"},
]


def saved_result(results: dict[str, Any], command: str) -> dict[str, Any]:
    """The table as bench/results.py keeps it: what the docs render."""
    rows = [{"measure": name, "records_per_s": round(r["per_s"]),
             **{k: round(r[k]) for k in ("write_p50_us", "write_p99_us") if k in r},
             **({"cpu_us_per_record": round(r["cpu_us_per_record"], 1)}
                if "cpu_us_per_record" in r else {})}
            for name, r in results.items()]
    return result("audit", command, COLUMNS, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--concurrency", type=int, default=64, help="concurrent writers")
    p.add_argument("--pg", help="PostgreSQL URL: also measure the PostgreSQL store")
    p.add_argument("--keep", type=Path, help="keep the SQLite logs in this folder")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; e.g. bench/published/audit-DATE.json)")
    args = p.parse_args()
    console = Console(highlight=False)
    console.print(f"{platform.python_implementation()} {platform.python_version()}, "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="modelfence-audit-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run(args, folder, console))
    show(results, console)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.save:
        save(args.save, saved_result(results, "python bench/audit.py " + shlex.join(sys.argv[1:])))


if __name__ == "__main__":
    main()
