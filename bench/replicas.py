"""Gateway replicas sharing Redis and PostgreSQL: added latency and aggregate throughput.

Targets, all answering the same OIP v2 request (one digits row) from the benchmark's OIP
backend (bench/oip_backend.py):

- direct:    the backend itself;
- memory:    one `modelfence serve` with its rate limit on memory:// (one process only);
- replica A, replica B: two `modelfence serve` processes with the same configuration —
  API keys and the audit log on PostgreSQL, the per-principal rate limit on Redis — the
  stateless set-up of many replicas.

Every gateway runs the full chain (API-key identity, policy, one per-principal rate limit
high enough never to refuse, bounded body, validation, metrics, chained audit) with one
worker. Measured per round: p50/p99 at 1 connection for direct, memory and replica A
(added = minus direct; target: added p50 ≤ 1.5 ms with Redis on the path), then
throughput of replica A alone at `--connections`, and of A and B together (one load
generator per replica, `--connections` / 2 each, at the same time). Medians over rounds.

On a machine with few CPUs the replicas, the backend, the load generators, Redis and
PostgreSQL share them, so two replicas cannot double one: the ratio shows what a second
replica gives here, not on separate machines.

    /tmp/v1/bin/python bench/replicas.py --duration 5 --rounds 3 [--json replicas.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from loadgen import AiohttpLoader, Load, Result, WrkLoader, make_loader
from oip_backend import ANSWER_ENV, ANSWERS
from overhead import INFER_PATH, _terminate, answer_of, digits_body, machine, workdir
from servers import HOST, Server, _modelfence, free_port, gateway_config, spawn, start_granian
from servers import wait_http as wait_server

TARGET_ADDED_P50_MS = 1.5
LATENCY_TARGETS = ("direct", "memory", "replica A")
DEFAULT_REDIS = os.environ.get("MODELFENCE_TEST_REDIS", "redis://127.0.0.1:6379/0")
DEFAULT_PG = os.environ.get("MODELFENCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RATE = "100000000/minute"  # on the path, never refusing


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32, help="for throughput (total)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--answer", choices=ANSWERS, default=ANSWERS[0])
    p.add_argument("--redis", default=DEFAULT_REDIS)
    p.add_argument("--pg", default=DEFAULT_PG)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--keep", type=Path, help="keep logs and configs in this folder")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1 or args.connections < 2:
        p.error("--duration and --rounds must be positive, --connections at least 2")
    return args


def with_database(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


def pg_admin(base: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql)


def start_replica(stack: ExitStack, folder: Path, name: str, doc: dict[str, Any]) -> Server:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({**doc, "server": {**doc["server"], "port": port}},
                                     sort_keys=False))
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config",
                         str(config)], log)
    url = f"http://{HOST}:{port}"
    wait_server(f"{url}/v2/health/live", proc, log)
    return Server(name, url, log, proc.pid)


def redis_keys(url: str, principal: str, *, delete: bool = False) -> int:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"*{principal}*", count=1000))
        if delete and keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def together(loader: WrkLoader | AiohttpLoader, loads: list[Load], connections: int,
             duration: float) -> list[Result]:
    """One load generator per target, all at once."""
    if isinstance(loader, AiohttpLoader):  # one process, one loop: share it
        async def both() -> list[Result]:
            from loadgen import _closed_loop

            return list(await asyncio.gather(*(_closed_loop(load, connections, duration)
                                               for load in loads)))
        return asyncio.run(both())
    with ThreadPoolExecutor(len(loads)) as pool:
        return list(pool.map(lambda load: loader.run(load, connections, duration), loads))


def measure(loader: WrkLoader | AiohttpLoader, loads: dict[str, Load],
            args: argparse.Namespace) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {f"{n} {k}": [] for n in LATENCY_TARGETS
                                    for k in ("p50", "p99")}
    runs.update({"one replica rps": [], "two replicas rps": [], "A share": []})
    for r in range(args.rounds):
        order = LATENCY_TARGETS[r % 3:] + LATENCY_TARGETS[:r % 3]
        for name in order:
            if args.warmup:
                loader.run(loads[name], args.connections, args.warmup)
            one = loader.run(loads[name], 1, args.duration)
            runs[f"{name} p50"].append(one.p50_ms)
            runs[f"{name} p99"].append(one.p99_ms)
            print(f"  round {r + 1}/{args.rounds} {name:<10} p50 {one.p50_ms:.3f} ms  "
                  f"p99 {one.p99_ms:.3f} ms", flush=True)
        single = loader.run(loads["replica A"], args.connections, args.duration)
        half = args.connections // 2
        pair = together(loader, [loads["replica A"], loads["replica B"]], half, args.duration)
        rps_pair = sum(x.rps for x in pair)
        runs["one replica rps"].append(single.rps)
        runs["two replicas rps"].append(rps_pair)
        runs["A share"].append(pair[0].rps / rps_pair)
        print(f"  round {r + 1}/{args.rounds} throughput: one replica {single.rps:,.0f} req/s "
              f"({args.connections} conns); two replicas {rps_pair:,.0f} req/s "
              f"({half} conns each: {pair[0].rps:,.0f} + {pair[1].rps:,.0f})", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    info = machine()
    loader = make_loader(args.loadgen, args.wrk_threads)
    body = digits_body()
    tag = secrets.token_hex(4)
    principal = f"bench-{tag}"
    db = f"modelfence_bench_{tag}"
    pg_admin(args.pg, f"CREATE DATABASE {db}")
    db_url = with_database(args.pg, db)
    try:
        with workdir(args.keep) as folder, ExitStack() as stack:
            backend = start_granian(stack, "backend", "oip_backend:create_app", folder,
                                    {ANSWER_ENV: args.answer})
            (folder / "secret").write_text(secrets.token_urlsafe(48))
            base = gateway_config(0, backend.url, db_url)
            base.update({
                "secret_file": str(folder / "secret"),
                "stores": {"keys": db_url},
                "quotas": {"storage": args.redis,
                           "limits": [{"scope": "principal", "rate": RATE}]},
            })
            a = start_replica(stack, folder / "a", "replica A", base)
            b = start_replica(stack, folder / "b", "replica B", base)
            # the same configuration but for the rate limit's storage
            memory = start_replica(stack, folder / "memory", "memory", {
                **base, "quotas": {"storage": "memory://",
                                   "limits": [{"scope": "principal", "rate": RATE}]}})
            key = json.loads(_modelfence(
                "keys", "create", "--config", str(folder / "a" / "modelfence.yaml"),
                "--principal", principal, "--tenant", "bench", "--model", "digits",
                "--json"))["key"]

            def load(server: Server, key: str | None) -> Load:
                headers = {"Content-Type": "application/json"}
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                return Load(server.url + INFER_PATH, body, headers)

            loads = {"direct": load(backend, None), "memory": load(memory, key),
                     "replica A": load(a, key), "replica B": load(b, key)}
            want = answer_of(loads["direct"])
            for name, target in loads.items():
                got = answer_of(target)
                if any(abs(x - y) > 1e-6 for x, y in zip(want, got, strict=True)):
                    raise RuntimeError(f"{name} answered {got}, the backend {want}")
            print(f"servers up: direct {backend.url}, memory {memory.url}, replica A {a.url}, "
                  f"replica B {b.url} (keys and audit on PostgreSQL, rate limit on Redis); "
                  f"load generator {loader.name}; measuring…", flush=True)
            runs = measure(loader, loads, args)
            info["redis_keys_for_principal"] = redis_keys(args.redis, principal)
    finally:
        redis_keys(args.redis, principal, delete=True)
        pg_admin(args.pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    med = {k: statistics.median(v) for k, v in runs.items()}
    report(info, med, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "medians": med, "rounds": runs,
                                         "settings": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2) + "\n")
    return 0


def report(info: dict[str, Any], med: dict[str, float], args: argparse.Namespace) -> None:
    print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}); date {info['date']}; "
          f"Python {info['python']}; modelfence {info['source']}")
    print(f"load average (1, 5, 15 min) at start {info['loadavg_at_start']}, "
          f"at end {info['loadavg_at_end']}")
    print(f"{args.rounds} round(s) of {args.duration:g} s per measurement; medians:")
    direct = med["direct p50"], med["direct p99"]
    for name in LATENCY_TARGETS:
        p50, p99 = med[f"{name} p50"], med[f"{name} p99"]
        added = "" if name == "direct" else (f"  added p50 {p50 - direct[0]:+.3f} ms  "
                                             f"added p99 {p99 - direct[1]:+.3f} ms")
        print(f"  {name:<10} p50 {p50:.3f} ms  p99 {p99:.3f} ms{added}")
    added = med["replica A p50"] - direct[0]
    print(f"  Redis on the path costs {med['replica A p50'] - med['memory p50']:+.3f} ms p50 "
          "over the same gateway with its rate limit on memory://")
    ok = added <= TARGET_ADDED_P50_MS
    print(f"  added p50 with Redis on the path: {added:+.3f} ms (target <= "
          f"{TARGET_ADDED_P50_MS} ms) {'met' if ok else 'MISSED'}")
    one, two = med["one replica rps"], med["two replicas rps"]
    print(f"  throughput: one replica {one:,.0f} req/s; two replicas {two:,.0f} req/s; "
          f"ratio {two / one:.2f} (replica A's share {med['A share']:.0%}; "
          f"{info['nproc']} CPUs shared by everything)")
    print(f"  rate-limit keys in Redis for the bench principal: "
          f"{info['redis_keys_for_principal']} (Redis was on the path)")


if __name__ == "__main__":
    sys.exit(main())
