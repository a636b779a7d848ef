"""Quota check cost per request: the rate-limit guard and a budget reservation, per store.

- rate limit: `RateLimitGuard.on_request` (the gateway's own guard, one `limits` hit per
  rule) with one per-principal limit high enough never to refuse, on memory:// and on
  redis:// (the shared storage replicas use), for the moving-window (default) and
  fixed-window strategies;
- budget: `BudgetGuard.on_request`, one atomic reservation (and its key), on SQLite and
  on PostgreSQL;
- for reference: one Redis PING and one PostgreSQL `SELECT 1` on the same client stacks,
  the round-trip floor under the shared stores.

Each case runs `--n` sequential checks on one event loop after a warm-up, and again with
`--concurrency` checks in flight (what a busy gateway worker sees). Redis keys and the
PostgreSQL database made for the run are removed at the end.

    /tmp/v1/bin/python bench/quota.py [--n 5000] [--redis redis://127.0.0.1:6379/0]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from modelfence.config import Budget, QuotaSettings, RateLimit
from modelfence.identity.principal import Principal
from modelfence.kernel.call import Call
from modelfence.quota.budget_guard import BudgetAlert, BudgetGuard
from modelfence.quota.budgets import budget_store_from_url
from modelfence.quota.ratelimit import RateLimitGuard
from results import result, save

DEFAULT_REDIS = os.environ.get("MODELFENCE_TEST_REDIS", "redis://127.0.0.1:6379/0")
DEFAULT_PG = os.environ.get("MODELFENCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_REDIS_P50_US = 1500.0  # the budget for Redis on the path, as a per-check bound

Check = Callable[[int], Awaitable[Any]]


@dataclass(frozen=True)
class Stats:
    p50_us: float
    p99_us: float
    mean_us: float
    per_s: float  # checks per second with `concurrency` in flight


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="checks per case")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--redis", default=DEFAULT_REDIS, help="'' to skip Redis")
    p.add_argument("--pg", default=DEFAULT_PG, help="'' to skip PostgreSQL")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; e.g. bench/published/quota-DATE.json)")
    return p.parse_args()


async def sequential(check: Check, n: int, warmup: int) -> list[float]:
    for i in range(warmup):
        await check(i)
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await check(i)
        samples.append(time.perf_counter() - started)
    return samples


async def concurrent(check: Check, n: int, concurrency: int) -> float:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await check(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def measure(check: Check, args: argparse.Namespace) -> Stats:
    samples = sorted(await sequential(check, args.n, args.warmup))
    per_s = await concurrent(check, args.n, args.concurrency)
    return Stats(samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6,
                 statistics.fmean(samples) * 1e6, per_s)


def fake_call(principal: Principal) -> Call:
    """A call as the guards see it after identity and model lookup (no HTTP request)."""
    call = Call(None, "infer", "digits")  # type: ignore[arg-type]
    call.principal = principal
    call.model = SimpleNamespace(name="digits")  # type: ignore[assignment]
    call.rows = 1
    return call


def rate_limit_check(storage: str, strategy: str, principal: Principal
                     ) -> tuple[RateLimitGuard, Check]:
    settings = QuotaSettings(storage=storage, strategy=strategy,  # type: ignore[arg-type]
                             limits=[RateLimit(scope="principal", rate="100000000/minute")])
    guard = RateLimitGuard(settings)

    async def check(i: int) -> None:
        await guard.on_request(fake_call(principal))

    return guard, check


async def alert(a: BudgetAlert) -> None:
    return None


def with_database(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


async def pg_admin(base: str, sql: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(base, autocommit=True) as conn:
        await conn.execute(sql)


async def run(args: argparse.Namespace) -> list[tuple[str, Stats]]:
    tag = secrets.token_hex(4)
    principal = Principal(id=f"bench-{tag}", tenant="bench", models=("digits",))
    results: list[tuple[str, Stats]] = []

    async def case(name: str, check: Check) -> None:
        stats = await measure(check, args)
        results.append((name, stats))
        print(f"  {name:<44} p50 {stats.p50_us:8.1f} µs  p99 {stats.p99_us:8.1f} µs  "
              f"mean {stats.mean_us:8.1f} µs  {stats.per_s:9,.0f}/s at "
              f"{args.concurrency} in flight", flush=True)

    for strategy in ("moving-window", "fixed-window"):
        for storage in ("memory://", args.redis):
            if not storage:
                continue
            guard, check = rate_limit_check(storage, strategy, principal)
            try:
                await case(f"rate limit {strategy} on {storage.split('://')[0]}", check)
            finally:
                await guard.close()
    if args.redis:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(args.redis)
        try:
            async def ping(i: int) -> None:
                await client.ping()

            await case("reference: Redis PING (redis.asyncio)", ping)
            keys = [k async for k in client.scan_iter(match=f"*{principal.id}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    budget = Budget(queries=10**12, period="month")
    with tempfile.TemporaryDirectory(prefix="modelfence-bench-") as tmp:
        stores = [("sqlite", f"sqlite:///{Path(tmp) / 'budgets.db'}")]
        db = f"modelfence_bench_{tag}"
        if args.pg:
            await pg_admin(args.pg, f"CREATE DATABASE {db}")
            stores.append(("postgresql", with_database(args.pg, db)))
        try:
            for name, url in stores:
                store = budget_store_from_url(url)
                await store.open()
                guard = BudgetGuard(store, [budget], alert)

                async def reserve(i: int, guard: BudgetGuard = guard) -> None:
                    await guard.on_request(fake_call(principal))

                try:
                    await case(f"budget reservation on {name}", reserve)
                finally:
                    await store.close()
            if args.pg:
                import psycopg

                async with await psycopg.AsyncConnection.connect(
                        with_database(args.pg, db), autocommit=True) as conn:
                    async def select1(i: int, conn: Any = conn) -> None:
                        await (await conn.execute("SELECT 1")).fetchone()

                    await case("reference: PostgreSQL SELECT 1 (psycopg)", select1)
        finally:
            if args.pg:
                await pg_admin(args.pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return results


COLUMNS = [
    {"key": "check", "title": "check"},
    {"key": "p50_us", "title": "p50", "format": "{:,.1f} µs"},
    {"key": "p99_us", "title": "p99", "format": "{:,.1f} µs"},
    {"key": "per_s", "title": "checks/s in flight", "format": "{:,.0f}"},
]


def saved_result(results: dict[str, Stats], command: str) -> dict[str, Any]:
    """The table as bench/results.py keeps it: what the docs render."""
    rows = [{"check": name, "p50_us": round(s.p50_us, 1), "p99_us": round(s.p99_us, 1),
             "per_s": round(s.per_s)} for name, s in results.items()]
    return result("quota", command, COLUMNS, rows)


def main() -> None:
    args = parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    print(f"machine: {len(os.sched_getaffinity(0))} CPUs ({cpu}); Python "
          f"{platform.python_version()}; date {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"load average at start {[round(x, 2) for x in os.getloadavg()]}; "
          f"{args.n} sequential checks per case after {args.warmup} warm-up, then "
          f"{args.n} with {args.concurrency} in flight")
    results = dict(asyncio.run(run(args)))
    print(f"load average at end {[round(x, 2) for x in os.getloadavg()]}")
    redis_case = results.get("rate limit moving-window on redis")
    if redis_case is not None:
        met = redis_case.p50_us <= TARGET_REDIS_P50_US
        print(f"  rate limit on Redis (default strategy): p50 {redis_case.p50_us:.0f} µs per "
              f"check (must fit the 1.5 ms added-p50 budget of a gateway with Redis on the "
              f"path): {'met' if met else 'MISSED'}")
    if args.save:
        save(args.save, saved_result(results, "python bench/quota.py " + shlex.join(sys.argv[1:])))


if __name__ == "__main__":
    main()
