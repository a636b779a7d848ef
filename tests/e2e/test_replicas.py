"""Two gateway replicas on loopback sharing a real PostgreSQL and a real Redis.

Both run the same configuration (API keys, budgets and the audit log on PostgreSQL, rate
limits on Redis) and must behave as one gateway: a key made through one works on the
other, a revocation through one is refused by the other within a second, a budget and a
rate limit hold across both under concurrent load, the budget alert is raised once, and
the audit log verifies as one signed trail holding both replicas' records.

Each module run gets a database of its own (dropped at the end) and principals named
with a random tag, so the rate-limit keys on the shared Redis never collide with another
run's (and are deleted at the end).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg
import pytest

from modelfence.audit.checkpoint import generate_keypair
from modelfence.quota.budgets import PostgresBudgetStore
from modelfence.stores.keys import PostgresKeyStore

from ..support import Gateway, cli, digits_rows, infer_body

pytestmark = pytest.mark.postgres

BODY = json.dumps(infer_body(digits_rows(1))).encode()
BUDGET = 40             # queries of model `digits` per principal and month
ALERT_AT = 0.8          # the alert comes with query 32
RATE = 6                # requests per minute per principal on model `limited`
CLIENTS = 8             # concurrent clients, each alternating between the replicas
REVOCATION_S = 1.0      # requirement: refused by the other replica within one second
POLL_S = 0.05


def database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass
class Cluster:
    a: Gateway
    b: Gateway
    db_url: str
    tag: str

    @property
    def replicas(self) -> tuple[Gateway, Gateway]:
        return self.a, self.b

    def principal(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def stop(self) -> None:
        for gw in self.replicas:
            gw.stop()

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(query, args).fetchall()


@pytest.fixture(scope="module")
def fresh_db(pg_url: str) -> Iterator[str]:
    name = f"modelfence_replicas_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield database_url(pg_url, name)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path],
            fresh_db: str, redis_url: str) -> Iterator[Cluster]:
    shared = tmp_path_factory.mktemp("replicas")
    (shared / "secret").write_text(secrets.token_urlsafe(48))
    generate_keypair(shared / "checkpoint.pem", shared / "checkpoint.pub.pem")
    models = [{"name": name, "backend": {"type": "skops", "path": str(digits_files["skops"])}}
              for name in ("digits", "limited")]
    extra = {
        "secret_file": str(shared / "secret"),
        "stores": {"keys": fresh_db},
        "audit": {"sink": fresh_db, "checkpoint_key_file": str(shared / "checkpoint.pem")},
        "quotas": {
            "storage": redis_url,
            "limits": [{"scope": "principal", "rate": f"{RATE}/minute", "models": ["limited"]}],
            "budget_store": fresh_db,
            "budgets": [{"models": ["digits"], "queries": BUDGET, "period": "month",
                         "alert_at": ALERT_AT}],
        },
    }
    token = secrets.token_urlsafe(24)
    a = Gateway(shared / "a", models, extra=extra, admin_token=token)
    b = Gateway(shared / "b", models, extra=extra, admin_token=token)
    c = Cluster(a, b, fresh_db, secrets.token_hex(4))
    try:
        # both at once on the empty database, as an orchestrator starts them
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Gateway.start, c.replicas))
        yield c
    finally:
        c.stop()
        _forget_redis_keys(redis_url, c.tag)


def _forget_redis_keys(url: str, tag: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        for key in client.scan_iter(match=f"*{tag}*", count=1000):
            client.delete(key)
    finally:
        client.close()


async def create_key(gw: Gateway, principal: str, models: list[str]) -> tuple[str, str]:
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.admin_url}/admin/keys", json={"principal": principal, "tenant": "acme",
                                                "models": models},
            headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        doc = await r.json()
        assert r.status == 201, doc
        return str(doc["key"]), str(doc["key_id"])


async def infer(session: aiohttp.ClientSession, gw: Gateway, key: str, model: str = "digits"
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.post(f"{gw.url}/v2/models/{model}/infer", data=BODY,
                            headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, await r.json(), {k.lower(): v for k, v in r.headers.items()}


async def alternate(c: Cluster, key: str, model: str, per_client: int
                    ) -> list[tuple[str, int, dict[str, Any], dict[str, str]]]:
    """CLIENTS concurrent clients, client i starting on replica i % 2 and alternating."""
    async def client(i: int) -> list[tuple[str, int, dict[str, Any], dict[str, str]]]:
        out = []
        async with aiohttp.ClientSession() as s:
            for n in range(per_client):
                gw = c.replicas[(i + n) % 2]
                status, doc, headers = await infer(s, gw, key, model)
                out.append(("a" if gw is c.a else "b", status, doc, headers))
        return out

    results = await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    return [r for rs in results for r in rs]


def metric(gw: Gateway, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


async def test_stores_open_together_on_a_fresh_database(pg_url: str) -> None:
    """Replicas started at the same moment create the shared tables at the same moment."""
    name = f"modelfence_replicas_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = database_url(pg_url, name)
    try:
        stores = [cls(url) for cls in (PostgresKeyStore, PostgresBudgetStore) for _ in range(4)]
        opened = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in stores))
        failed = {type(s).__name__: repr(r) for s, r in zip(stores, opened, strict=True)
                  if isinstance(r, BaseException)}
        assert not failed, f"a replica would refuse to start: {failed}"
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_key_created_through_one_replica_works_on_the_other(cluster: Cluster) -> None:
    key, key_id = await create_key(cluster.a, cluster.principal("maker"), ["digits"])
    async with aiohttp.ClientSession() as s:
        status, doc, _ = await infer(s, cluster.b, key)
        assert status == 200, doc
        async with s.get(f"{cluster.b.admin_url}/admin/keys",
                         headers={"Authorization": f"Bearer {cluster.b.admin_token}"}) as r:
            listed = {k["key_id"]: k for k in (await r.json())["keys"]}
    assert listed[key_id]["principal"] == cluster.principal("maker")


async def test_revocation_through_one_replica_is_refused_by_the_other_within_1s(
        cluster: Cluster) -> None:
    key, key_id = await create_key(cluster.a, cluster.principal("revoked"), ["digits"])
    async with aiohttp.ClientSession() as s:
        assert (await infer(s, cluster.a, key))[0] == 200
        # The worst case: B has just looked the key up and holds a fresh cache entry.
        assert (await infer(s, cluster.b, key))[0] == 200
        started = time.monotonic()
        async with s.delete(f"{cluster.a.admin_url}/admin/keys/{key_id}",
                            headers={"Authorization": f"Bearer {cluster.a.admin_token}"}) as r:
            assert r.status == 200, await r.text()
        assert (await infer(s, cluster.a, key))[0] == 401  # the revoking replica: at once
        statuses: list[tuple[float, int]] = []
        while time.monotonic() - started < 3 * REVOCATION_S:
            status, doc, _ = await infer(s, cluster.b, key)
            statuses.append((round(time.monotonic() - started, 3), status))
            if status == 401:
                break
            assert status == 200, doc
            await asyncio.sleep(POLL_S)
    refused_after = statuses[-1][0] if statuses[-1][1] == 401 else None
    assert refused_after is not None, f"replica B still accepts the revoked key: {statuses}"
    assert refused_after <= REVOCATION_S, (
        f"replica B first refused the revoked key {refused_after:.3f} s after the revocation "
        f"began (polled every {POLL_S} s; key_cache_ttl_s bounds this); answers: "
        f"{statuses[-3:]}")


async def test_budget_is_never_exceeded_across_replicas(cluster: Cluster) -> None:
    principal = cluster.principal("budget")
    key, _ = await create_key(cluster.a, principal, ["digits"])
    per_client = 8  # 64 requests for a budget of 40
    results = await alternate(cluster, key, "digits", per_client)
    assert len(results) == CLIENTS * per_client > BUDGET

    answered = [r for r in results if r[1] == 200]
    refused = [r for r in results if r[1] != 200]
    assert len(answered) == BUDGET, sorted({r[1] for r in results})
    assert {r[0] for r in answered} == {"a", "b"}  # both replicas spent the one budget
    for _, status, doc, headers in refused:
        assert status == 429, doc
        assert int(headers["retry-after"]) >= 1
        assert doc["error"].startswith(
            f"extraction budget for model 'digits' exhausted: {BUDGET} queries per month")

    used = cluster.sql("SELECT queries FROM modelfence_budgets WHERE key LIKE %s",
                       f"%|{principal}|digits|%")
    assert used == [(BUDGET,)]

    # The 80 % alert: exactly once in the shared audit log, once across both replicas.
    deadline = time.monotonic() + 5
    alerts: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline and not alerts:
        alerts = cluster.sql("SELECT payload FROM modelfence_audit WHERE action = "
                             "'alert:budget' AND principal = %s", principal)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # a second, wrong alert would be written by now
    alerts = cluster.sql("SELECT payload FROM modelfence_audit WHERE action = 'alert:budget' "
                         "AND principal = %s", principal)
    assert len(alerts) == 1, alerts
    reason = json.loads(bytes(alerts[0][0]))["reason"]
    assert f"{int(ALERT_AT * BUDGET)}/{BUDGET} queries" in reason
    assert sum(metric(gw, "modelfence_budget_alerts_total") for gw in cluster.replicas) == 1


async def test_rate_limit_is_shared_across_replicas(cluster: Cluster) -> None:
    key, _ = await create_key(cluster.a, cluster.principal("limited"), ["limited"])
    results = await alternate(cluster, key, "limited", 2)  # 16 requests, RATE allowed
    answered = [r for r in results if r[1] == 200]
    refused = [r for r in results if r[1] != 200]
    assert len(answered) == RATE, sorted(r[1] for r in results)
    assert {r[0] for r in refused} == {"a", "b"}
    for _, status, doc, headers in refused:
        assert status == 429, doc
        assert f"rate limit {RATE}/minute per principal reached" in doc["error"]
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["ratelimit-limit"] == str(RATE)


async def test_audit_log_verifies_as_one_trail(cluster: Cluster) -> None:
    """Last in this module: it stops the replicas, so that both seal the chain's head."""
    keys = {}
    for gw, name in ((cluster.a, "trail-a"), (cluster.b, "trail-b")):
        keys[name] = (gw, (await create_key(gw, cluster.principal(name), ["digits"]))[0])
    async with aiohttp.ClientSession() as s:
        for gw, key in keys.values():
            for _ in range(3):
                assert (await infer(s, gw, key))[0] == 200
    cluster.stop()  # closing flushes the queued records and signs the head

    for gw in cluster.replicas:
        result = cli("audit", "verify", "--config", str(gw.config), "--json", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] and report["damage"] is None, report
        assert report["signatures_checked"] and report["unsealed"] == 0, report
        assert report["checkpoints"] >= 1

    rows = cluster.sql("SELECT count(*) FROM modelfence_audit")[0][0]
    assert report["records"] == rows
    by_principal = dict(cluster.sql(
        "SELECT principal, count(*) FROM modelfence_audit WHERE action = 'infer' "
        "AND principal LIKE %s GROUP BY principal", f"trail-%-{cluster.tag}"))
    assert by_principal == {cluster.principal("trail-a"): 3, cluster.principal("trail-b"): 3}
    admin = cluster.sql("SELECT count(*) FROM modelfence_audit WHERE action = "
                        "'admin:create-key'")[0][0]
    assert admin >= 2  # made through A and through B
