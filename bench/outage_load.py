"""The load of the outage benches (store_outage.py, audit_outage.py): keep-alive clients
sending at a fixed pace through an outage, each answer kept as (start, status, seconds)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Iterable

import aiohttp

DEFAULT_PG = os.environ.get("MODELFENCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
Answer = tuple[float, int, float]  # start, status, seconds (status 0: no answer)


def add_load_args(p: argparse.ArgumentParser) -> None:
    """The outage and the load around it: --outage, --before, --after, --rate, --connections."""
    p.add_argument("--outage", type=float, default=60.0, help="seconds PostgreSQL is away")
    p.add_argument("--before", type=float, default=5.0, help="seconds of load before it")
    p.add_argument("--after", type=float, default=5.0, help="seconds of load after it")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second, in all")
    p.add_argument("--connections", type=int, default=4)


async def client(url: str, key: str, body: bytes, interval_s: float, until: float,
                 out: list[Answer]) -> None:
    """One keep-alive connection sending at `interval_s`; (start, status, seconds) each."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        next_at = time.monotonic()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            started = time.monotonic()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            out.append((started, status, time.monotonic() - started))
            next_at += interval_s


def count_statuses(answers: Iterable[Answer]) -> dict[str, int]:
    """How many answers had each status, in the order the statuses first came."""
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[str(a[1])] = statuses.get(str(a[1]), 0) + 1
    return statuses
