"""How fast the console's pages answer over a big audit log (issue 22's target: 300 ms).

Loads 1,000,000 chained, checkpointed audit records of 100,000 principals (1,000 tenants,
five models) into a PostgreSQL schema of its own with COPY, a budget row per principal and
two watermark evidence records per principal, and the digits model's extraction monitor
with the first `--monitor-principals` of them (the state file the gateway restores at start;
a caller that sent 8 rows holds about 10 KB, its rings grown to what it sent); starts a
real gateway (`modelfence serve`) whose audit log, budgets and evidence are there, with the
console on; logs in as the admin; and asks every console page (and every kind of audit
search) `--reps` times on one keep-alive connection, after warm-up. The time is measured by
the client on loopback, so it is the server's time plus a fraction of a millisecond of HTTP.
The schema is dropped at the end unless `--keep`.

    python bench/console.py --save bench/published/console-2026-12-05.json
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from modelfence.audit.chain import COLUMNS, Entry, Head, link
from modelfence.audit.checkpoint import Signer
from modelfence.audit.sql import CHECKPOINT_COLUMNS, CHECKPOINTS, TABLE, Sql
from modelfence.quota.budgets import PostgresBudgetStore, budget_key, period_bounds
from modelfence.watermark.store import PostgresEvidenceStore
from results import result, save
from servers import HOST, free_port, spawn, stop_on_sigterm, wait_http, workdir

MODELS = ("digits", "iris", "fraud", "churn", "credit")
DAY_US = 86_400_000_000
SPAN_DAYS = 30
CHECKPOINT_EVERY = 1000
CHUNK = 50_000


def _schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def _entries(start: int, n: int, total: int, principals: int, t0: int) -> list[Entry]:
    """Records start..start+n: mostly answered inferences, some refusals, alerts, admin."""
    out = []
    step = SPAN_DAYS * DAY_US // total
    for i in range(start, start + n):
        h = (i * 2654435761) & 0xFFFFFFFF  # a cheap, fixed scramble: reproducible runs
        p = h % principals
        principal, tenant, model = f"p{p:06d}", f"t{p % 1000:04d}", MODELS[(h >> 8) % 5]
        kind = (h >> 12) % 100
        action = ("alert:monitor" if kind == 0 else "admin:list-keys" if kind == 1
                  else "infer")
        status = 503 if kind in (2, 3) else 429 if kind < 8 else 403 if kind < 10 else 200
        ts = t0 + i * step
        request_id = f"{i:032x}"
        record: dict[str, Any] = {
            "action": action, "model": model, "principal": principal, "tenant": tenant,
            "key_id": f"{h:016x}", "request_id": request_id, "status": status,
            "decision": "allow" if status < 400 else "deny",
            "reason": "ok" if status < 400 else f"status {status}", "rows": 8,
            "risk": round(kind / 100, 2), "latency_ms": 1.2,
            "time": datetime.fromtimestamp(ts / 1e6, UTC).isoformat()}
        out.append(Entry(ts, request_id, principal, tenant, model, action, status,
                         orjson.dumps(record, option=orjson.OPT_SORT_KEYS)))
    return out


def load_audit(url: str, records: int, principals: int, signer: Signer) -> tuple[float, float]:
    """COPY the chain and its checkpoints; then the store's own schema statements build
    the indexes (as a gateway upgrading over an existing log would). Seconds for each."""
    sql = Sql(mark="%s", bigint="BIGINT", blob="BYTEA")
    tables = [s for s in sql.schema if s.lstrip().startswith("CREATE TABLE")]
    t0 = int(time.time() * 1e6) - SPAN_DAYS * DAY_US
    started = time.perf_counter()
    head = Head()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in tables:
            conn.execute(statement)
        for start in range(0, records, CHUNK):
            rows = link(head, _entries(start, min(CHUNK, records - start), records,
                                       principals, t0))
            head = Head(rows[-1].seq, rows[-1].hash)
            cps = [signer.sign(r.seq, r.hash, r.ts_us) for r in rows
                   if r.seq % CHECKPOINT_EVERY == 0]
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY {TABLE} ({','.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                with cur.copy(f"COPY {CHECKPOINTS} ({','.join(CHECKPOINT_COLUMNS)}) "
                              "FROM STDIN") as copy:
                    for cp in cps:
                        copy.write_row((cp.seq, cp.ts_us, cp.hash, cp.key_id, cp.signature))
            print(f"  audit: {head.seq:,} records", file=sys.stderr, end="\r")
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        for statement in sql.schema:  # the migration: CREATE INDEX IF NOT EXISTS ...
            conn.execute(statement)
        conn.execute(f"ANALYZE {TABLE}")
    print(file=sys.stderr)
    return loaded, time.perf_counter() - started


async def _create_stores(url: str) -> None:
    for store in (PostgresBudgetStore(url), PostgresEvidenceStore(url)):
        await store.open()  # creates its table
        await store.close()


def load_books(url: str, principals: int) -> None:
    """A budget row per principal (digits, today) and two evidence records each."""
    import asyncio

    asyncio.run(_create_stores(url))
    period, _ = period_bounds("day", datetime.now(UTC))
    now = int(time.time() * 1e6)
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY modelfence_budgets (key, queries, rows) FROM STDIN") as copy:
            for p in range(principals):
                copy.write_row((budget_key(0, f"p{p:06d}", "digits", period), p % 500,
                                (p % 500) * 8))
        cols = ("kind, model, principal, tenant, key_id, input_sha256, input, sealed_by, "
                "n_features, n_classes, model_index, model_label, decoy_index, decoy_label, "
                "request_id, time_us")
        with cur.copy(f"COPY modelfence_watermarks ({cols}) FROM STDIN") as copy:
            for p in range(principals):
                for j, kind in enumerate(("watermark", "control")):
                    copy.write_row((kind, "digits", f"p{p:06d}", f"t{p % 1000:04d}", "k1",
                                    f"{p:056x}{j:08x}", bytes(256), None, 64, 10, 1, "1", 2,
                                    "2", f"{p:030x}{j:02x}", now - j))
        conn.execute("ANALYZE modelfence_budgets")
        conn.execute("ANALYZE modelfence_watermarks")


def load_monitor(folder: Path, principals: int) -> float:
    """The digits monitor's state with `principals` callers of 1,000 tenants (a few rows
    each, some wild so that risks spread), written where the gateway restores it from."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from modelfence.config.monitor import MonitorSettings
    from modelfence.monitor.score import Monitor
    from modelfence.monitor.score import MonitorSettings as MonitorOptions
    from modelfence.monitor.summary import Summary

    started = time.perf_counter()
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    model = LogisticRegression(max_iter=2000).fit(x, y)
    Summary.fit(x[1000:], model.predict_proba(x[1000:])).save(folder / "digits.summary.npz")
    ms = MonitorSettings(max_principals=principals)
    monitor = Monitor(Summary.load(folder / "digits.summary.npz"), MonitorOptions(
        detectors=tuple(ms.detectors), threshold=ms.threshold,
        max_principals=ms.max_principals, release=ms.release, min_dwell_s=ms.min_dwell_s,
        hold_s=ms.hold_s, sticky=tuple(ms.sticky)))
    rng = np.random.default_rng(0)
    now = time.time() - 3600
    for p in range(principals):
        rows = x[rng.integers(0, len(x), 8)]
        if p % 97 == 0:  # a few thieves with wild queries
            rows = rng.uniform(0, 1, size=(8, x.shape[1]))
        monitor.observe(f"p{p:06d}", rows, model.predict_proba(rows),
                        tenant=f"t{p % 1000:04d}", now=now + p * 0.01)
    (folder / "monitor-state").mkdir(exist_ok=True)
    (folder / "monitor-state" / "digits.monitor-state").write_bytes(monitor.snapshot())
    return time.perf_counter() - started


def start_gateway(stack: ExitStack, folder: Path, url: str, key: Ed25519PrivateKey
                  ) -> tuple[str, str]:
    """A gateway over the loaded schema with the console on; its admin URL and token."""
    (folder / "secret").write_text(secrets.token_urlsafe(48))
    token = secrets.token_urlsafe(32)
    (folder / "admin-token").write_text(token)
    (folder / "wm.secret").write_text(secrets.token_urlsafe(48))
    (folder / "audit.pem").write_bytes(key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    reports = folder / "reports"
    for run in range(20):
        (reports / f"run-{run:02d}").mkdir(parents=True, exist_ok=True)
        (reports / f"run-{run:02d}" / "report.html").write_text("<html>report</html>")
        (reports / f"run-{run:02d}" / "assessment.json").write_text("{}")
    port, admin_port = free_port(), free_port()
    doc: dict[str, Any] = {
        "server": {"host": HOST, "port": port, "admin_listen": f"{HOST}:{admin_port}"},
        "secret_file": "secret", "admin": {"token_file": "admin-token"},
        "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": url, "checkpoint_key_file": "audit.pem"},
        "console": {"enabled": True, "reports_dir": "reports"},
        "quotas": {"budget_store": url,
                   "budgets": [{"models": ["digits"], "queries": 10_000, "period": "day"}]},
        "watermark": {"models": ["digits"], "keys": [{"id": "k1", "secret_file": "wm.secret"}],
                      "evidence_store": url},
        # the periodic snapshot at its default interval: the pages are timed while it runs
        "monitor": {"state_dir": "monitor-state", "max_principals": 1_000_000},
        "models": [{"name": m, "backend": {"type": "oip", "url": "http://127.0.0.1:9"},
                    "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]},
                    **({"monitor": {"summary": "digits.summary.npz"}} if m == "digits"
                       else {})}
                   for m in MODELS]}
    (folder / "modelfence.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config",
                         str(folder / "modelfence.yaml")], log)
    admin = f"http://{HOST}:{admin_port}"
    wait_http(f"{admin}/console/login", proc, log, timeout_s=600)  # the indexes exist
    return admin, token


def pages(t0_iso: str, t1_iso: str) -> list[tuple[str, str]]:
    return [
        ("overview", "/console/"),
        ("audit: newest", "/console/audit"),
        ("audit: principal", "/console/audit?principal=p012345"),
        ("audit: tenant", "/console/audit?tenant=t0042"),
        ("audit: model + 5xx", "/console/audit?model=iris&status=5xx"),
        ("audit: action (alerts)", "/console/audit?action=alert:monitor"),
        ("audit: action prefix", "/console/audit?action=admin:*"),
        ("audit: one day", f"/console/audit?since={t0_iso}&until={t1_iso}"),
        ("audit: page at record 500,000", "/console/audit?before=500000"),
        ("audit: principal + 4xx", "/console/audit?principal=p054321&status=4xx"),
        ("budgets", "/console/budgets?principal=p012345"),
        ("watermarks", "/console/watermarks?principal=p012345"),
        ("reports", "/console/reports"),
        ("models", "/console/models"),
        ("ranking", "/console/ranking?model=digits"),
        ("principal", "/console/principal?model=digits&id=p012345"),
        ("alerts", "/console/alerts"),
    ]


#: The pages that read the monitor's book in the gateway's process (the others read
#: PostgreSQL): timed a second time while a periodic save of the book is running.
MONITOR_PAGES = ("models", "ranking", "principal", "alerts")


def wait_for_save(folder: Path, since: float, timeout_s: float = 900) -> float:
    """Seconds until the gateway wrote its monitor state after `since` (a finished save)."""
    state = folder / "monitor-state" / "digits.monitor-state"
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if state.exists() and state.stat().st_mtime > since:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"no monitor save within {timeout_s:.0f} s")


def measure(admin: str, token: str, reps: int, *, only: tuple[str, ...] = (),
            label: str = "") -> list[dict[str, Any]]:
    mid = datetime.now(UTC).timestamp() - SPAN_DAYS * 86_400 / 2
    day0 = datetime.fromtimestamp(mid, UTC).strftime("%Y-%m-%dT%H:%M")
    day1 = datetime.fromtimestamp(mid + 86_400, UTC).strftime("%Y-%m-%dT%H:%M")
    rows = []
    with httpx.Client(base_url=admin, timeout=60) as client:
        login = client.post("/console/login", data={"credential": token},
                            headers={"Sec-Fetch-Site": "same-origin"})
        if login.status_code != 303:
            raise RuntimeError(f"console login refused: {login.status_code}")
        for name, path in pages(day0, day1):
            if only and name not in only:
                continue
            times = []
            for i in range(reps + 3):
                started = time.perf_counter()
                r = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
                if i >= 3:  # warm-up: first connection, plan caches
                    times.append(elapsed)
            q = statistics.quantiles(times, n=100, method="inclusive")
            row: dict[str, Any] = {"page": name + label, "path": path.split("?")[0],
                                   "p50_ms": statistics.median(times), "p99_ms": q[98],
                                   "max_ms": max(times)}
            if q[98] > 300:
                row["emphasis"] = ["p99_ms"]
            print(f"  {name + label:48} p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms",
                  file=sys.stderr)
            rows.append(row)
    return rows


def main() -> None:
    import signal

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--principals", type=int, default=100_000)
    p.add_argument("--monitor-principals", type=int, default=100_000,
                   help="callers in the monitor's book (8 rows each, about 10 KB of memory)")
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--keep", action="store_true", help="keep the schema and the folder")
    p.add_argument("--save", type=Path, help="write the result file the docs render")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    schema = f"mf_console_bench_{secrets.token_hex(3)}"
    url = _schema_url(args.pg, schema)
    key = Ed25519PrivateKey.generate()
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        loaded, indexed = load_audit(url, args.records, args.principals, Signer(key))
        print(f"audit: {args.records:,} records loaded in {loaded:.1f} s, indexes built in "
              f"{indexed:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        load_books(url, args.principals)
        books = time.perf_counter() - started
        # the folder outlives the gateway: it writes its monitor state there as it stops
        with workdir(Path(schema) if args.keep else None, prefix="console-bench-") as folder, \
                ExitStack() as stack:
            monitored = load_monitor(folder, args.monitor_principals)
            print(f"monitor: {args.monitor_principals:,} principals in {monitored:.1f} s",
                  file=sys.stderr)
            admin, token = start_gateway(stack, folder, url, key)
            # the first periodic save starts 10 s after the book is restored, when the gateway
            # begins to answer (monitor.snapshot_interval_s), and with a big book lasts tens of
            # seconds: the monitor's pages are timed inside it, then every page once it is
            # over (the next waits ten times as long as it took)
            time.sleep(12)
            begun = time.time()
            rows = measure(admin, token, args.reps, only=MONITOR_PAGES,
                           label=" (during a save)")
            saved = wait_for_save(folder, begun)
            print(f"the first save ended {saved:.0f} s after the timing above", file=sys.stderr)
            rows = measure(admin, token, args.reps) + rows
    finally:
        if not args.keep:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    if args.save:
        doc = result("console", " ".join(["python", "bench/console.py", *sys.argv[1:]]),
                     [{"key": "page", "title": "page"}, {"key": "path", "title": "route"},
                      {"key": "p50_ms", "title": "p50 ms", "format": "{:.1f}"},
                      {"key": "p99_ms", "title": "p99 ms", "format": "{:.1f}"},
                      {"key": "max_ms", "title": "max ms", "format": "{:.1f}"}], rows,
                     note=f"{args.records:,} audit records of {args.principals:,} principals "
                     f"in PostgreSQL 15 (COPY {loaded:.0f} s, indexes {indexed:.0f} s; "
                     f"budgets and evidence {books:.0f} s; the monitor's book of "
                     f"{args.monitor_principals:,} of them {monitored:.0f} s); {args.reps} "
                     "requests per page "
                     "after 3 warm-up, one keep-alive connection, timed by the client on "
                     "loopback")
        save(args.save, doc)


if __name__ == "__main__":
    main()
