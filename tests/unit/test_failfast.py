"""While a store is down, requests are refused at once instead of each waiting a timeout,
and the outage is logged once when it starts and once when it ends."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from modelfence.errors import StoreError
from modelfence.stores.breaker import Breaker
from modelfence.stores.health import stores_not_ready


class Store:
    """A store that can be taken away: its calls hang until the test says how they end."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.release = asyncio.Event()

    async def call(self) -> str:
        self.calls += 1
        if not self.up:
            raise ConnectionRefusedError("refused")
        return "answer"

    async def hang(self) -> str:
        self.calls += 1
        await self.release.wait()
        return "late answer"

    async def probe(self) -> None:
        if not self.up:
            raise ConnectionRefusedError("refused")


async def test_refuses_at_once_while_down_and_closes_when_the_probe_answers(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "modelfence.stores")
    store = Store()
    breaker = Breaker("keys", "test key store", store.probe, probe_every_s=0.05)
    try:
        assert await breaker.run(store.call, timeout_s=3) == "answer"
        store.up = False
        with pytest.raises(StoreError) as first:
            await breaker.run(store.call, timeout_s=3)
        assert first.value.store == "keys" and first.value.reported
        calls = store.calls
        started = time.monotonic()
        for _ in range(100):
            with pytest.raises(StoreError, match="unavailable"):
                await breaker.run(store.call, timeout_s=3)
        assert time.monotonic() - started < 0.1
        assert store.calls == calls  # refused without touching the store
        store.up = True
        for _ in range(40):
            if not breaker.is_open:
                break
            await asyncio.sleep(0.05)
        assert await breaker.run(store.call, timeout_s=3) == "answer"
    finally:
        await breaker.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0] == ("ERROR", "test key store failed (ConnectionRefusedError); requests "
                        "that need it are refused until it answers again")
    assert lines[1][0] == "INFO" and lines[1][1].startswith("test key store answers again")
    assert "100 calls were refused" in lines[1][1]
    assert len(lines) == 2


async def test_a_failure_cuts_the_calls_already_waiting_on_the_store() -> None:
    """The calls in flight when the store went away do not each wait for their timeout."""
    store = Store()
    breaker = Breaker("budget", "test budget store", store.probe, probe_every_s=0.05)
    try:
        waiting = [asyncio.ensure_future(breaker.run(store.hang, timeout_s=3))
                   for _ in range(5)]
        await asyncio.sleep(0.01)
        store.up = False
        started = time.monotonic()
        with pytest.raises(StoreError):
            await breaker.run(store.call, timeout_s=3)
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert time.monotonic() - started < 0.5
        assert all(isinstance(r, StoreError) and r.store == "budget" for r in results)
    finally:
        await breaker.close()


async def test_an_error_that_is_no_outage_opens_nothing() -> None:
    async def bad() -> None:
        raise ValueError("a constraint, not an outage")

    breaker = Breaker("keys", "test key store", Store().probe)
    with pytest.raises(ValueError, match="constraint"):
        await breaker.run(bad, timeout_s=3)
    assert not breaker.is_open


async def test_a_store_that_does_not_answer_in_time_opens_the_breaker() -> None:
    store = Store()
    breaker = Breaker("keys", "test key store", store.probe)
    try:
        with pytest.raises(StoreError):
            await breaker.run(store.hang, timeout_s=0.05)
        assert breaker.is_open
    finally:
        await breaker.close()


async def test_readiness_checks_run_at_once_each_bounded() -> None:
    async def hangs() -> bool:
        await asyncio.sleep(30)
        return True

    async def fine() -> bool:
        return True

    async def raises() -> bool:
        raise ConnectionError("down")

    started = time.monotonic()
    failing = await stores_not_ready([("a", hangs), ("b", fine), ("c", hangs), ("d", raises),
                                      ("e", hangs)], timeout_s=0.2)
    assert failing == ["a", "c", "d", "e"]
    assert time.monotonic() - started < 0.6  # not 3 x 0.2 s in turn, and not 30 s
