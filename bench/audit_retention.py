"""What audit retention costs: `seal` and `prune` throughput, and bytes per record kept.

Fills a chained store with `--records` records shaped like the gateway's (an AuditRecord
of an allowed call with its decision trail, about 1 KB of canonical JSON), signed every
1000 records, then times:

* seal — verify every record and checkpoint, write gzip segments, sign their manifests;
* prune — re-verify each archive against its manifest and the store, then delete;
* verify — `verify_store` from the pruned anchor, and `verify_archive` over everything.

Bytes per record: the store before pruning (SQLite: file pages in use; PostgreSQL:
`pg_total_relation_size`, table and indexes), the canonical JSON alone, and the archive.

    .venv/bin/python bench/audit_retention.py --records 100000 [--pg postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import platform
import secrets
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from modelfence.audit.chain import Entry, Head, entry_from_dict, link
from modelfence.audit.checkpoint import Checkpoint, Signer
from modelfence.audit.retention import prune, seal, verify_archive
from modelfence.audit.store import AuditStore, Batch, audit_store_from_url
from modelfence.audit.verify import verify_store

TRAIL = [{"guard": g, "decision": "allow", "reason": r} for g, r in (
    ("identity", "api key 0123456789abcdef"), ("policy", "permit default-grant"),
    ("quota", "ok"), ("budget", "reserved 1 of 10000"), ("screening", "ok"),
    ("monitor", "risk 0.0412"), ("shaping", "band low: top-k 3, round 2"),
    ("watermark", "keyed"))]


def record(i: int, t0: float) -> dict[str, Any]:
    return {
        "time": datetime.fromtimestamp(t0 + i / 1000, UTC).isoformat(),
        "request_id": secrets.token_hex(16), "action": "infer", "model": "digits",
        "principal": f"user-{i % 97}", "tenant": "acme", "key_id": secrets.token_hex(8),
        "source": f"10.0.{i % 7}.{i % 251}", "status": 200, "decision": "allow",
        "reason": "ok", "policy_ids": ["default-grant"], "latency_ms": 1.734 + i % 13,
        "rows": 1, "risk": 0.0412, "bytes_in": 1311, "bytes_out": 402,
        "input_sha256": secrets.token_hex(32), "output_sha256": secrets.token_hex(32),
        "trail": TRAIL, "replica": "gw-1:4242", "shaping": "low", "inputs": None,
    }


async def fill(store: AuditStore, n: int, signer: Signer, batch: int = 5000) -> int:
    """Append n records in batches, a signed checkpoint every 1000; returns canonical bytes."""
    t0 = time.time() - 86_400
    total = 0
    for start in range(0, n, batch):
        entries: list[Entry] = [entry_from_dict(record(i, t0), now=t0)
                                for i in range(start, min(n, start + batch))]
        total += sum(len(e.payload) for e in entries)

        def plan(head: Head, last: Checkpoint | None, entries: list[Entry] = entries) -> Batch:
            rows = link(head, entries)
            return Batch(rows, signer.sign(rows[-1].seq, rows[-1].hash, time.time_ns() // 1000))

        await store.commit(plan)
    return total


def store_bytes(url: str, path: Path | None) -> int:
    if path is not None:
        with sqlite3.connect(path) as db:
            page = db.execute("PRAGMA page_size").fetchone()[0]
            used = db.execute("PRAGMA page_count").fetchone()[0] - db.execute(
                "PRAGMA freelist_count").fetchone()[0]
        return int(page * used)
    import psycopg

    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT pg_total_relation_size('modelfence_audit')"
                                ).fetchone()[0])


async def run(name: str, url: str, path: Path | None, n: int, folder: Path,
              per_segment: int) -> dict[str, Any]:
    signer = Signer(Ed25519PrivateKey.generate())
    store = audit_store_from_url(url)
    await store.open()
    try:
        canonical = await fill(store, n, signer)
        before = store_bytes(url, path)
        t = time.perf_counter()
        sealed = await seal(store, signer, folder, through=n, segment_records=per_segment)
        seal_s = time.perf_counter() - t
        await store.commit(lambda head, last: Batch(link(head, [entry_from_dict(
            record(n, time.time()), now=time.time())])))  # a newer record: the head moves on
        t = time.perf_counter()
        pruned = await prune(store, signer.public, folder, through=n)
        prune_s = time.perf_counter() - t
        t = time.perf_counter()
        live = await verify_store(store, public_key=signer.public)
        live_s = time.perf_counter() - t
        t = time.perf_counter()
        whole = await verify_archive(store, folder, public_key=signer.public)
        whole_s = time.perf_counter() - t
    finally:
        await store.close()
    assert pruned.rows == n and live.ok and whole.ok and whole.records == n + 1
    with gzip.open(folder / sealed.segments[0].file) as f:
        line_bytes = sum(len(line) for line in f) / sealed.segments[0].records
    return {"store": name, "records": n, "seal_per_s": n / seal_s, "prune_per_s": n / prune_s,
            "verify_archive_per_s": (n + 1) / whole_s, "verify_live_s": live_s,
            "store_b": before / n, "json_b": canonical / n, "line_b": line_bytes,
            "archive_b": sealed.bytes / n, "segments": len(sealed.segments)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--segment-records", type=int, default=100_000)
    ap.add_argument("--pg", help="PostgreSQL URL (a scratch schema is created and dropped)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "audit.db"
        results.append(asyncio.run(run("sqlite", f"sqlite:///{db}", db, args.records,
                                       Path(tmp) / "archive-sqlite", args.segment_records)))
        if args.pg:
            results.append(asyncio.run(run_pg(args.pg, args.records, Path(tmp) / "archive-pg",
                                              args.segment_records)))
    table = Table(title=f"audit retention, {platform.node()} ({platform.machine()}), "
                        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    for col in ("store", "records", "seal rec/s", "prune rec/s", "verify --archive rec/s",
                "store B/rec", "JSON B/rec", "archive line B/rec", "archive gz B/rec",
                "ratio vs store"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["store"], f"{r['records']:,}", f"{r['seal_per_s']:,.0f}",
                      f"{r['prune_per_s']:,.0f}", f"{r['verify_archive_per_s']:,.0f}",
                      f"{r['store_b']:,.0f}", f"{r['json_b']:,.0f}", f"{r['line_b']:,.0f}",
                      f"{r['archive_b']:,.0f}", f"{r['store_b'] / r['archive_b']:.1f}x")
    Console(width=170).print(table)


async def run_pg(url: str, n: int, folder: Path, per_segment: int) -> dict[str, Any]:
    import psycopg

    schema = f"mf_bench_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    try:
        return await run("postgresql", scoped, None, n, folder, per_segment)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
