"""While a store is down, requests are refused at once instead of each waiting a timeout,
and the outage is logged once when it starts and once when it ends; an error that is no
outage (a refused statement, one slow query) fails only its own call."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from modelfence.errors import StoreError
from modelfence.gateway.readiness import Readiness
from modelfence.stores.breaker import Breaker
from modelfence.stores.outages import postgres_outage, redis_outage


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


async def test_an_error_that_is_no_outage_fails_only_its_call(
        caplog: pytest.LogCaptureFixture) -> None:
    """A constraint, a deadlock, a value the store refuses: that call gets a StoreError (a
    503 for its caller), the others go on, the calls in flight are not cut, and the log gets
    one WARNING a minute per error class, not one per call and never an outage line."""
    caplog.set_level(logging.DEBUG, "modelfence.stores")
    store = Store()

    async def refused() -> None:
        raise ValueError("a constraint, not an outage")

    breaker = Breaker("keys", "test key store", store.probe, probe_every_s=0.05)
    try:
        waiting = asyncio.ensure_future(breaker.run(store.hang, timeout_s=3))
        await asyncio.sleep(0.01)
        for _ in range(50):
            with pytest.raises(StoreError, match="refused a call: ValueError") as failed:
                await breaker.run(refused, timeout_s=3)
            assert failed.value.reported and failed.value.store == "keys"
            assert await breaker.run(store.call, timeout_s=3) == "answer"
        assert not breaker.is_open and breaker.outages == 0 and breaker.call_errors == 50
        store.release.set()
        assert await waiting == "late answer"  # not cut
    finally:
        await breaker.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 1 and lines[0][0] == "WARNING", lines
    assert lines[0][1].startswith("test key store failed a call (ValueError); that call is "
                                  "refused, the store stays in use")


async def test_one_slow_call_fails_alone_while_the_probe_answers(
        caplog: pytest.LogCaptureFixture) -> None:
    """A query that runs out of time (a lock held elsewhere, a slow plan) is not an outage:
    the probe it starts answers, so the breaker stays closed however many calls time out,
    and it does not flap open and closed with an ERROR each time."""
    caplog.set_level(logging.DEBUG, "modelfence.stores")
    store = Store()
    breaker = Breaker("keys", "test key store", store.probe)
    try:
        for _ in range(5):
            with pytest.raises(StoreError, match=r"did not answer within 0\.05 s") as slow:
                await breaker.run(store.hang, timeout_s=0.05)
            assert slow.value.reported
            await asyncio.sleep(0.01)  # the probe's turn
            assert not breaker.is_open
        assert await breaker.run(store.call, timeout_s=3) == "answer"
    finally:
        await breaker.close()
    assert breaker.outages == 0
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING"], lines
    assert "(TimeoutError after 0.05 s, 1 in a row)" in lines[0][1]


async def test_a_timeout_whose_probe_fails_too_opens_the_breaker() -> None:
    store = Store()
    breaker = Breaker("keys", "test key store", store.probe, probe_every_s=0.05)
    try:
        store.up = False  # calls hang and the probe is refused: the store is gone
        with pytest.raises(StoreError):
            await breaker.run(store.hang, timeout_s=0.05)
        for _ in range(20):
            if breaker.is_open:
                break
            await asyncio.sleep(0.01)
        assert breaker.is_open
        with pytest.raises(StoreError, match="unavailable"):
            await breaker.run(store.call, timeout_s=3)
    finally:
        await breaker.close()


@pytest.mark.parametrize("name", [
    "QueryCanceled", "DeadlockDetected", "SerializationFailure", "LockNotAvailable",
    "ProgramLimitExceeded", "DiskFull", "OutOfMemory", "UniqueViolation",
    "StringDataRightTruncation", "UndefinedTable", "DataError"])
def test_postgres_errors_about_one_statement_are_no_outage(name: str) -> None:
    import psycopg.errors

    assert not postgres_outage(getattr(psycopg.errors, name)("from the test"))


@pytest.mark.parametrize("name", [
    "ConnectionException", "ConnectionFailure", "SqlclientUnableToEstablishSqlconnection",
    "AdminShutdown", "CrashShutdown", "CannotConnectNow", "TooManyConnections"])
def test_postgres_connection_failures_are_outages(name: str) -> None:
    import psycopg.errors

    assert postgres_outage(getattr(psycopg.errors, name)("from the test"))


def test_a_broken_connection_or_an_exhausted_pool_is_an_outage() -> None:
    import psycopg
    from psycopg_pool import PoolTimeout

    assert postgres_outage(psycopg.OperationalError("server closed the connection"))
    assert postgres_outage(psycopg.InterfaceError("the connection is closed"))
    assert postgres_outage(PoolTimeout("couldn't get a connection after 3.00 sec"))
    assert postgres_outage(ConnectionRefusedError("refused"))
    # psycopg refuses NUL itself, with no SQLSTATE: about the value, not the connection
    assert not postgres_outage(psycopg.DataError("PostgreSQL text fields cannot contain NUL"))
    assert not postgres_outage(psycopg.ProgrammingError("wrong number of parameters"))
    assert not postgres_outage(TimeoutError())  # the breaker's probe decides those
    assert not postgres_outage(ValueError("a bug"))


def test_redis_outages_are_connection_errors_wrapped_or_not() -> None:
    import redis.exceptions
    from limits.errors import StorageError

    down = redis.exceptions.ConnectionError("Connection refused")
    refused = redis.exceptions.ResponseError("WRONGTYPE Operation against a key")
    assert redis_outage(down) and redis_outage(StorageError(down))
    assert redis_outage(redis.exceptions.TimeoutError("Timeout reading from socket"))
    assert redis_outage(ConnectionResetError())
    assert not redis_outage(refused) and not redis_outage(StorageError(refused))
    assert not redis_outage(ValueError("a bug"))


async def test_a_refused_statement_does_not_open_a_postgres_breaker() -> None:
    """The breaker of a PostgreSQL store, fed what psycopg raises for a key too long for
    its index: that call fails, the store stays in use."""
    import psycopg.errors

    store = Store()

    async def too_long() -> None:
        raise psycopg.errors.ProgramLimitExceeded("index row size 3032 exceeds maximum 2712")

    breaker = Breaker("budget", "test budget store", store.probe, outage=postgres_outage)
    try:
        for _ in range(3):
            with pytest.raises(StoreError, match="refused a call: ProgramLimitExceeded"):
                await breaker.run(too_long, timeout_s=3)
        assert not breaker.is_open
        assert await breaker.run(store.call, timeout_s=3) == "answer"
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

    readiness = Readiness({}, [("a", hangs), ("b", fine), ("c", hangs), ("d", raises),
                               ("e", hangs)], models_needed="any", probe_timeout_s=0.2)
    started = time.monotonic()
    await readiness.start()  # one whole round
    assert readiness.known().not_ready == ("a", "c", "d", "e")
    assert time.monotonic() - started < 0.6  # not 3 x 0.2 s in turn, and not 30 s
    await readiness.close()
