"""An error that is no outage fails only its own call: one caller's odd identity never makes a
PostgreSQL store refuse everyone (breaker open, calls in flight cut, an ERROR outage line).

A budget key holding a 3 KB principal id is over PostgreSQL's index row limit
(ProgramLimitExceeded), and psycopg refuses text with NUL in it: both used to open the
store's circuit breaker as if PostgreSQL were down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from modelfence.errors import StoreError
from modelfence.policy import DEFAULT_POLICY
from modelfence.quota.budgets import PostgresBudgetStore

from ..jwks_server import Issuer, JwksServer
from ..outage_support import scratch_database
from ..support import Gateway, digits_rows, infer_body
from .test_jwt_gateway import jwt_config

BODY = json.dumps(infer_body(digits_rows(1))).encode()
# a principal id over PostgreSQL's index row limit (about 2.7 KB), random so that it does not
# compress below it
LONG_ID = secrets.token_urlsafe(2250)
# reads context.queries, so the query count's row (quota/usage.py) is used as well
COUNTING = 'forbid (principal, action, resource) when { context.queries >= 1000000 };\n'


@pytest.fixture
def errors_db(pg_url: str) -> Iterator[str]:
    with scratch_database(pg_url, "modelfence_errors") as url:
        yield url


@pytest.mark.postgres
async def test_a_statement_postgres_refuses_fails_only_its_call(
        errors_db: str, caplog: pytest.LogCaptureFixture) -> None:
    """The budget store fed a key too long for its index: those calls fail, the other keys'
    calls (some in flight at the same time) all succeed, and nothing is logged as an outage."""
    caplog.set_level(logging.INFO, "modelfence.stores")
    store = PostgresBudgetStore(errors_db)
    await store.open()
    try:
        async def others() -> int:
            done = 0
            for i in range(40):
                await store.reserve(f"0|other-{i % 4}|digits|total", 1, 1, None, None)
                done += 1
            return done

        async def too_long() -> int:
            failed = 0
            for _ in range(5):
                with pytest.raises(StoreError):
                    await store.reserve(f"0|{LONG_ID}|digits|total", 1, 1, None, None)
                failed += 1
                await asyncio.sleep(0.01)
            return failed

        assert await asyncio.gather(others(), too_long(), others()) == [40, 5, 40]
    finally:
        await store.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if "until it answers again" in r.getMessage()]


class Other(threading.Thread):
    """Another principal sending inferences in a loop; every status recorded."""

    def __init__(self, gw: Gateway, key: str) -> None:
        super().__init__(daemon=True)
        self.gw, self.key, self.statuses = gw, key, list[int]()
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        async with aiohttp.ClientSession() as s:
            while not self.stop.is_set():
                async with s.post(f"{self.gw.url}/v2/models/digits/infer", data=BODY,
                                  headers={"Authorization": f"Bearer {self.key}"}) as r:
                    await r.read()
                    self.statuses.append(r.status)


async def infer(gw: Gateway, token: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v2/models/digits/infer", data=BODY,
            headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.text()


@pytest.mark.postgres
async def test_a_3kb_principal_id_or_a_nul_in_it_never_refuses_anyone_else(
        tmp_path: Path, digits_files: dict[str, Path], errors_db: str) -> None:
    """Keys and budgets on PostgreSQL. A key whose principal id is 3 KB long (a row written
    by another tool: the admin API allows 128 characters) is answered; JWTs whose `sub` has
    NUL in it, or is 3 KB long, get a 401; another principal sending meanwhile is never
    refused, and the log has no ERROR line."""
    idp = Issuer()
    idp.add("ec", "ec-1")
    (tmp_path / "policy.cedar").write_text(Path(str(DEFAULT_POLICY)).read_text() + COUNTING)
    models = [{"name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])}}]
    with JwksServer(idp) as jwks:
        gw = Gateway(tmp_path, models, extra={
            **jwt_config(jwks.url), "stores": {"keys": errors_db},
            "policy": {"files": ["policy.cedar"]},
            "quotas": {"budget_store": errors_db,
                       "budgets": [{"queries": 1000, "period": "month"}]}}).start()
        try:
            other = Other(gw, gw.key(principal="bystander"))
            long_key = gw.key(principal="to-be-long")
            with psycopg.connect(errors_db, autocommit=True) as conn:
                conn.execute("UPDATE modelfence_keys SET principal = %s WHERE principal = %s",
                             (LONG_ID, "to-be-long"))
            other.start()
            time.sleep(0.3)
            answers = [await infer(gw, long_key) for _ in range(5)]
            nul = [await infer(gw, idp.token("ec-1", sub=f"mallory{c}x"))
                   for c in ("\x00", "\n", "\x7f")]
            huge = await infer(gw, idp.token("ec-1", sub=LONG_ID))
            assert (await infer(gw, idp.token("ec-1")))[0] == 200  # a plain JWT still works
            time.sleep(0.3)
        finally:
            other.stop.set()
            other.join(timeout=20)
            gw.stop()
    log = gw.log.read_text()
    assert [s for s, _ in answers] == [200] * 5, answers
    assert [s for s, _ in nul] == [401] * 3, nul
    assert "missing or invalid credentials" in nul[0][1]
    assert huge[0] == 401, huge
    assert other.statuses and set(other.statuses) == {200}, sorted(set(other.statuses))
    errors = [li for li in log.splitlines() if " ERROR " in li or "Traceback" in li]
    assert not errors, "\n".join(errors[:10])
    assert "until it answers again" not in log
