"""A thief alternating between two replicas is caught after as many queries as on one.

Two gateways share the monitor's Redis stream (and one SQLite key file and secret, so a key
works on both). The same thief's rows are sent to one replica, then — as another principal
— alternately to both; the query at which each is moved to the labels-only band must match.
An operator's pin made in one replica's console reaches the other's next answers within
its one-second read of the shared pins. Each run uses its own Redis key prefix, deleted at
the end.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import redis

from modelfence.monitor.pins import REFRESH_S

from ..support import Gateway
from .test_monitor_gateway import ask, digits, monitored_gateway, thief_rows

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path],
         redis_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    prefix = f"mftest:{secrets.token_hex(4)}:"
    shared_secret = secrets.token_urlsafe(48)
    keys = tmp_path_factory.mktemp("shared") / "keys.db"
    gws = []
    for name in ("a", "b"):
        folder = tmp_path_factory.mktemp(f"replica-{name}")
        (folder / "secret").write_text(shared_secret)
        gw = monitored_gateway(folder, digits_files,
                               extra_monitor={"shared": redis_url, "key_prefix": prefix,
                                              "snapshot_interval_s": 1})
        gw.extra["stores"] = {"keys": f"sqlite:///{keys}"}
        gw.extra["console"] = {"enabled": True}
        gws.append(gw.start())
    yield gws[0], gws[1]
    for gw in gws:
        gw.stop()
    client = redis.Redis.from_url(redis_url)
    for k in client.scan_iter(match=f"{prefix}*"):
        client.delete(k)
    client.close()


def labels_from(replicas: list[Gateway], key: str, rows: np.ndarray[Any, Any]) -> int | None:
    """The 1-based query whose answer first came back labels-only (None if never)."""
    for i, row in enumerate(rows):
        r = ask(replicas[i % len(replicas)], key, row[None, :])
        if r.status_code == 403:
            return None
        if r.json()["parameters"]["shaping"] == "labels":
            return i + 1
        time.sleep(0.02)  # a client's think time: the observation is applied meanwhile
    return None


def test_two_replicas_catch_the_thief_as_one_does(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    rows = thief_rows(100, seed=21)
    one = labels_from([a], a.key(principal="solo-thief", tenant="t1"), rows)
    both = labels_from([a, b], a.key(principal="split-thief", tenant="t2"), rows)
    assert one is not None and both is not None
    assert abs(one - both) <= 1, (one, both)


def test_a_replica_started_later_knows_the_thief(pair: tuple[Gateway, Gateway],
                                                 digits_files: dict[str, Path]) -> None:
    a, b = pair
    key = a.key(principal="late-thief", tenant="t3")
    assert labels_from([a], key, thief_rows(100, seed=5)) is not None
    b.stop()
    time.sleep(1.5)  # a snapshot is written meanwhile; b replays the stream after it
    b.start()
    r = ask(b, key, thief_rows(1, seed=6))
    assert r.status_code in (200, 403)
    if r.status_code == 200:
        assert r.json()["parameters"]["shaping"] == "labels"


def _bands(gws: list[Gateway], key: str) -> list[str]:
    row = digits()[:1]
    return [ask(gw, key, row).json()["parameters"]["shaping"] for gw in gws]


def _until(gw: Gateway, key: str, band: str) -> float:
    """Seconds until `gw` answers `key` in `band` (fails after three refresh periods)."""
    started = time.monotonic()
    while _bands([gw], key) != [band]:
        assert time.monotonic() - started < 3 * REFRESH_S + 1, f"still not {band}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_pin_reaches_the_other_replica_within_a_second(pair: tuple[Gateway, Gateway]
                                                          ) -> None:
    a, b = pair
    key = a.key(principal="careful-reader", tenant="library")
    assert _bands([a, b], key) == ["full", "full"]
    with closing(httpx.Client(base_url=a.admin_url)) as console:
        assert console.post("/console/login",
                            data={"credential": a.admin_token}).status_code == 303
        page = console.get("/console/principal",
                           params={"model": "digits", "id": "careful-reader"})
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        form = {"csrf": csrf, "model": "digits", "principal": "careful-reader"}
        pinned = console.post("/console/principal/pin",
                              data={**form, "band": "labels", "hours": "1"})
        assert pinned.status_code == 303
        assert _bands([a], key) == ["labels"]  # where it was made: at once
        assert _until(b, key, "labels") <= 2 * REFRESH_S + 0.5
        assert console.post("/console/principal/unpin", data=form).status_code == 303
        assert _bands([a], key) == ["full"]
        _until(b, key, "full")
