"""/metrics with two workers: whichever worker answers, it answers for the server.

A gateway with `server.workers: 2` serves N requests, each on a connection of its own (the
kernel spreads them over both workers, which the test checks from the files each worker
writes in the shared metrics folder); each scrape, also on a connection of its own, must
count all N, with the duration histogram by model agreeing. After SIGHUP (what a policy
reload does with several workers: granian respawns them all) the counts stay and the gauges
of the workers that stopped leave the answer. With the monitor shared through Redis, the
gauges measured at each scrape (callers flagged, principals per band) are the same whichever
worker answers.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from ..support import Gateway, descendants, infer_body
from .test_admin_listener import BODY, skops_model
from .test_monitor_gateway import monitored_gateway, thief_rows

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gw: Gateway) -> Samples:
    async with aiohttp.ClientSession() as s, s.get(
            f"{gw.admin_url}/metrics", headers={"Connection": "close"}) as r:
        assert r.status == 200
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def send(gw: Gateway, key: str, n: int) -> list[int]:
    statuses = []
    for _ in range(n):  # a new connection each: the kernel spreads them over both workers
        async with aiohttp.ClientSession() as s, s.post(
                f"{gw.url}/v2/models/digits/infer", data=BODY,
                headers={"Authorization": f"Bearer {key}", "Connection": "close"}) as r:
            statuses.append(r.status)
    return statuses


def metrics_folder(gw: Gateway) -> Path:
    """The folder the workers share: where the files they map into memory lie."""
    assert gw.proc is not None
    for pid in descendants(gw.proc.pid):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if m := re.search(r" (/\S+)/counter_\d+\.db$", maps, re.M):
            return Path(m.group(1))
    raise AssertionError("no worker maps a shared metrics file")


async def workers_up(gw: Gateway, count: int) -> None:
    """Until `count` workers in all have said they serve (a respawned one says it again)."""
    deadline = time.monotonic() + 30
    while gw.log.read_text().count("admin API and metrics on") < count:
        assert time.monotonic() < deadline, gw.log.read_text()[-3000:]
        await asyncio.sleep(0.1)


async def logged(gw: Gateway, line: str) -> None:
    deadline = time.monotonic() + 20
    while line not in gw.log.read_text():
        assert time.monotonic() < deadline, gw.log.read_text()[-3000:]
        await asyncio.sleep(0.1)


async def settled(gw: Gateway, want: int) -> Samples:
    """A scrape once the last requests are counted (just after each answer leaves)."""
    deadline = time.monotonic() + 5
    while True:
        samples = await scrape(gw)
        if total(samples, "modelfence_requests_total") >= want or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)


async def test_every_scrape_counts_every_workers_requests(tmp_path: Path,
                                                           digits_files: dict[str, Path]
                                                           ) -> None:
    gw = Gateway(tmp_path / "gw", [skops_model(digits_files)])
    gw.extra["server"] = {"host": "127.0.0.1", "port": gw.port, "workers": 2,
                          "admin_listen": f"127.0.0.1:{gw.admin_port}"}
    gw.start()
    try:
        await workers_up(gw, 2)
        key = gw.key()
        n_ok, n_bad = 30, 6
        assert await send(gw, key, n_ok) == [200] * n_ok
        assert await send(gw, "mf_not-a-key", n_bad) == [401] * n_bad
        n = n_ok + n_bad
        await settled(gw, n)
        folder = metrics_folder(gw)
        writers = {m.group(1) for f in folder.iterdir()
                   if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))}
        assert len(writers) == 2, "the requests did not reach both workers"

        for _ in range(10):  # each on a new connection: both workers answer some
            samples = await scrape(gw)
            assert total(samples, "modelfence_requests_total") == n
            assert total(samples, "modelfence_requests_total", model="digits",
                         status="200") == n_ok
            assert total(samples, "modelfence_requests_total", status="401") == n_bad
            assert total(samples, "modelfence_request_duration_seconds_count",
                         model="digits") == n_ok
            assert total(samples, "modelfence_request_duration_seconds_bucket",
                         model="digits", le="+Inf") == n_ok
            assert total(samples, "modelfence_denials_total") == n_bad
            # gauges: one value per label set, not one per worker
            assert _values(samples, "modelfence_model_ready") == [1.0]
            assert _values(samples, "modelfence_store_ready", store="key store") == [1.0]

        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)  # a policy reload respawns every worker
        await workers_up(gw, 4)
        # granian starts each new worker before it stops the old one, one at a time
        await logged(gw, "Stopped old worker-2")
        assert await send(gw, key, 4) == [200] * 4
        samples = await settled(gw, n + 4)
        assert total(samples, "modelfence_requests_total") == n + 4  # the stopped ones' too
        assert _values(samples, "modelfence_model_ready") == [1.0]
        live = {m.group(1) for f in folder.iterdir()
                if (m := re.fullmatch(r"gauge_live\w+_(\d+)\.db", f.name))}
        assert live and not live & writers, "stopped workers' live gauges were left"
    finally:
        gw.stop()


def _values(samples: Samples, name: str, **labels: Any) -> list[float]:
    want = set(labels.items())
    return [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]


@pytest.mark.redis
async def test_flagged_callers_are_counted_alike_by_every_worker(
        tmp_path: Path, digits_files: dict[str, Path], redis_url: str) -> None:
    prefix = f"mftest:{secrets.token_hex(4)}:"
    gw = monitored_gateway(tmp_path / "gw", digits_files,
                           extra_monitor={"shared": redis_url, "key_prefix": prefix})
    gw.extra["server"] = {"host": "127.0.0.1", "port": gw.port, "workers": 2,
                          "admin_listen": f"127.0.0.1:{gw.admin_port}"}
    gw.start()
    try:
        await workers_up(gw, 2)
        thief = gw.key(principal="mallory", tenant="shady")
        for row in thief_rows(60):  # a new connection each: both workers see the thief
            async with aiohttp.ClientSession() as s, s.post(
                    f"{gw.url}/v2/models/digits/infer", json=infer_body([row.tolist()]),
                    headers={"Authorization": f"Bearer {thief}", "Connection": "close"}) as r:
                assert r.status == 200
                if (await r.json())["parameters"]["shaping"] == "labels":
                    break
        else:
            raise AssertionError("the thief was never moved to labels only")
        flagged = {"model": "digits", "kind": "principal"}
        deadline = time.monotonic() + 10
        while total(await scrape(gw), "modelfence_monitor_flagged", **flagged) < 1:
            assert time.monotonic() < deadline, "no worker counts the thief"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the other worker applies the last observations too
        for _ in range(10):
            samples = await scrape(gw)
            assert _values(samples, "modelfence_monitor_flagged", **flagged) == [1.0]
            assert _values(samples, "modelfence_monitor_band_principals", model="digits",
                           band="labels") == [1.0]
    finally:
        gw.stop()
        client = redis.Redis.from_url(redis_url)
        for k in client.scan_iter(match=f"{prefix}*"):
            client.delete(k)
        client.close()
