"""Store outages through a real gateway: Redis or PostgreSQL cut, then restored.

The gateway reaches the real Redis and PostgreSQL through a loopback proxy
(tests/tcp_proxy.py) that the test cuts — open connections reset, new ones refused — and
restores, so the machine's services keep running. By default a store that cannot answer
denies the request (503, a clear error naming no secret, counted, logged);
`quotas.fail_open` lets rate-limited requests through instead, and never budgets. The
gateway reconnects by itself: no restart.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from modelfence.errors import StoreError
from modelfence.quota.budgets import PostgresBudgetStore
from modelfence.stores.keys import PostgresKeyStore

from ..outage_support import ClientThreads, proxied_postgres, scratch_database
from ..support import Gateway, digits_rows, infer_body
from ..tcp_proxy import TcpProxy
from .openai_stub import OpenAiStub

BODY = json.dumps(infer_body(digits_rows(1))).encode()
KEYS_DOWN = {"error": "the key store is unavailable; request denied"}
BUDGET_DOWN = {"error": "the budget store is unavailable; request denied"}
RATE_LIMIT_DOWN = {"error": "the rate limit store is unavailable; request denied"}
RECOVERY_S = 5.0  # longest wait for the first answer after a store comes back


def post_json(gw: Gateway, path: str, data: bytes, key: str
              ) -> tuple[int, dict[str, Any], float]:
    """POST a JSON body to the gateway; (status, body, seconds), errors included."""
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        f"{gw.url}{path}", data=data, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 (loopback only)
            return r.status, json.loads(r.read()), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), time.monotonic() - started


def http(gw: Gateway, key: str, model: str = "digits") -> tuple[int, dict[str, Any], float]:
    """POST one inference; (status, body, seconds)."""
    return post_json(gw, f"/v2/models/{model}/infer", BODY, key)


def readiness(gw: Gateway) -> tuple[int, str | None]:
    """Status and error of /v2/health/ready."""
    try:
        with urllib.request.urlopen(f"{gw.url}/v2/health/ready", timeout=5) as r:  # noqa: S310
            return r.status, json.loads(r.read()).get("error")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()).get("error")


def store_errors(gw: Gateway, store: str) -> float:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    m = re.search(rf'^modelfence_store_errors_total{{store="{store}"}} (\S+)$', text,
                  re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def wait_for_log(gw: Gateway, text: str, timeout_s: float = 3.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        log = gw.log.read_text()
        if text in log or time.monotonic() > deadline:
            assert text in log, f"{text!r} not logged; the log ends:\n{log[-2000:]}"
            return log
        time.sleep(0.05)


def recover(gw: Gateway, key: str) -> float:
    """Seconds until the gateway answers 200 again (polled every 50 ms, bounded)."""
    started = time.monotonic()
    while True:
        status, doc, _ = http(gw, key)
        if status == 200:
            return time.monotonic() - started
        assert (status, doc) in ((503, KEYS_DOWN), (503, BUDGET_DOWN), (503, RATE_LIMIT_DOWN))
        assert time.monotonic() - started < RECOVERY_S, "no recovery without a restart"
        time.sleep(0.05)


def assert_no_secret(doc: dict[str, Any], *secrets_: str) -> None:
    text = json.dumps(doc)
    for s in secrets_:
        assert s not in text


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(redis_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        yield proxy


def redis_gateway(folder: Path, digits: dict[str, Path], redis_url: str, proxy: TcpProxy,
                  *, fail_open: bool) -> Gateway:
    parts = urlsplit(redis_url)
    storage = urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
    models = [{"name": name, "backend": {"type": "skops", "path": str(digits["skops"])}}
              for name in ("digits", "free")]
    return Gateway(folder, models, extra={"quotas": {
        "storage": storage, "fail_open": fail_open,
        "limits": [{"scope": "principal", "rate": "1000/minute", "models": ["digits"]}]}})


def forget_redis_keys(url: str, principal: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        for key in client.scan_iter(match=f"*{principal}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def test_redis_outage_fails_closed_and_recovers(
        tmp_path: Path, digits_files: dict[str, Path], redis_url: str,
        redis_proxy: TcpProxy) -> None:
    gw = redis_gateway(tmp_path, digits_files, redis_url, redis_proxy, fail_open=False).start()
    principal = f"outage-{secrets.token_hex(4)}"
    try:
        key = gw.key(principal=principal)
        assert http(gw, key)[0] == 200

        redis_proxy.cut()
        status, doc, seconds = http(gw, key)
        assert (status, doc) == (503, RATE_LIMIT_DOWN)
        assert seconds < 2.0  # refused connections fail at once (socket timeout 1 s)
        assert_no_secret(doc, key, gw.admin_token, "redis://", str(redis_proxy.port))
        assert http(gw, key, "free")[0] == 200  # a route without rate limits needs no Redis
        assert store_errors(gw, "ratelimit") == 1
        for _ in range(20):  # refused at once, counted, not logged one by one
            status, doc, seconds = http(gw, key)
            assert (status, doc) == (503, RATE_LIMIT_DOWN) and seconds < 1.0
        assert store_errors(gw, "ratelimit") == 21
        log = wait_for_log(gw, "ERROR modelfence.stores: rate limit storage failed")
        assert len(problem_lines(log)) == 1, problem_lines(log)
        assert readiness(gw) == (503, "not ready")

        redis_proxy.restore()
        assert recover(gw, key) < RECOVERY_S
        refused = store_errors(gw, "ratelimit")  # the outage's, and the polls' until its probe
        assert http(gw, key)[0] == 200
        assert store_errors(gw, "ratelimit") == refused
        assert readiness(gw) == (200, None)
        wait_for_log(gw, "INFO modelfence.stores: rate limit storage answers again")
    finally:
        gw.stop()
        forget_redis_keys(redis_url, principal)


def test_redis_outage_fails_open_when_configured(
        tmp_path: Path, digits_files: dict[str, Path], redis_url: str,
        redis_proxy: TcpProxy) -> None:
    gw = redis_gateway(tmp_path, digits_files, redis_url, redis_proxy, fail_open=True).start()
    principal = f"outage-{secrets.token_hex(4)}"
    try:
        key = gw.key(principal=principal)
        assert http(gw, key)[0] == 200
        redis_proxy.cut()
        for _ in range(3):
            status, doc, seconds = http(gw, key)
            assert status == 200, doc
            assert seconds < 2.0
        log = wait_for_log(gw, "rate limit storage failed")
        assert re.search(r"WARNING modelfence\.stores: rate limit storage failed \(\w+\); "
                         r"allowing requests \(fail_open\)", log), log[-2000:]
        assert store_errors(gw, "ratelimit") == 0  # nothing was denied
        text = urllib.request.urlopen(f"{gw.admin_url}/metrics",  # noqa: S310 (loopback)
                                      timeout=5).read().decode()
        let_through = re.search(r"^modelfence_rate_limit_fail_open_total (\S+)$", text, re.M)
        assert let_through is not None and float(let_through.group(1)) >= 3
        redis_proxy.restore()
        assert http(gw, key)[0] == 200
    finally:
        gw.stop()
        forget_redis_keys(redis_url, principal)


@pytest.fixture(scope="module")
def outage_db(pg_url: str) -> Iterator[str]:
    with scratch_database(pg_url, "modelfence_outage") as url:
        yield url


@pytest.mark.postgres
def test_postgres_outage_fails_closed_and_recovers(
        tmp_path: Path, digits_files: dict[str, Path], outage_db: str) -> None:
    """Keys and budgets on PostgreSQL; `fail_open` is set and must not apply to them."""
    with proxied_postgres(outage_db) as (proxy, url):
        models = [{"name": "digits", "backend": {"type": "skops",
                                                  "path": str(digits_files["skops"])}}]
        gw = Gateway(tmp_path, models, extra={
            "stores": {"keys": url}, "key_cache_ttl_s": 1.0,
            "quotas": {"fail_open": True, "budget_store": url,
                       "budgets": [{"queries": 1000, "period": "month"}]}}).start()
        try:
            key = gw.key()
            assert http(gw, key)[0] == 200

            proxy.cut()
            # The key is still in the replica's cache (key_cache_ttl_s): the budget store fails.
            status, doc, seconds = http(gw, key)
            assert (status, doc) == (503, BUDGET_DOWN)
            assert seconds < 2.0  # not the 3 s wait for a pool connection
            assert_no_secret(doc, key, gw.admin_token, "postgresql://", str(proxy.port))
            assert store_errors(gw, "budget") == 1
            wait_for_log(gw, "ERROR modelfence.stores: postgresql budget store failed")

            time.sleep(1.1)  # past the key cache: now the key store fails first
            status, doc, seconds = http(gw, key)
            assert (status, doc) == (503, KEYS_DOWN)
            assert seconds < 2.0  # not the 3 s wait for a pool connection
            assert store_errors(gw, "keys") == 1
            wait_for_log(gw, "ERROR modelfence.stores: postgresql key store failed")

            proxy.restore()
            assert recover(gw, key) < RECOVERY_S
            with urllib.request.urlopen(f"{gw.url}/v2/health/ready",  # noqa: S310 (loopback)
                                        timeout=10) as r:
                assert r.status == 200
        finally:
            gw.stop()


@pytest.mark.postgres
async def test_postgres_stores_reconnect_promptly_after_a_longer_outage(
        outage_db: str) -> None:
    """A request that waited for a connection during the outage must not leave the pool
    backing off for seconds after PostgreSQL is back (psycopg_pool doubles its reconnect
    delay until `reconnect_timeout`, 5 minutes by default)."""
    with proxied_postgres(outage_db) as (proxy, url):
        keys, budgets = PostgresKeyStore(url), PostgresBudgetStore(url)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "keys": lambda: keys.get("0" * 16), "budget": lambda: budgets.usage("probe")}
        await keys.open()
        await budgets.open()
        try:
            for call in calls.values():
                await call()
            proxy.cut()

            async def during(call: Callable[[], Awaitable[object]]) -> None:
                for _ in range(2):  # a broken connection, then a wait for a new one
                    with pytest.raises(StoreError):
                        await call()

            await asyncio.gather(*(during(c) for c in calls.values()))
            await asyncio.sleep(0.5)
            proxy.restore()

            async def recovery(call: Callable[[], Awaitable[object]]) -> float:
                started = time.monotonic()
                while time.monotonic() - started < 8:
                    try:
                        await call()
                        return time.monotonic() - started
                    except StoreError:
                        await asyncio.sleep(0.05)
                return float("inf")

            took = dict(zip(calls, await asyncio.gather(*(recovery(c) for c in
                                                          calls.values())), strict=True))
        finally:
            await keys.close()
            await budgets.close()
    assert all(t <= 1.5 for t in took.values()), f"seconds to the first answer: {took}"


class Load(ClientThreads):
    """A few clients sending inferences in a loop from threads; each answer's (start, status,
    seconds) recorded, so an outage's refusals can be timed one by one."""

    join_s = 20.0

    def __init__(self, gw: Gateway, keys: list[str]) -> None:
        super().__init__(keys)
        self._gw = gw
        self._keys = keys
        self.answers: list[tuple[float, int, float]] = []

    def send(self, key: str) -> None:
        started = time.monotonic()
        status, _, seconds = http(self._gw, key)
        self.answers.append((started, status, seconds))

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [a for a in self.answers if start <= a[0] < end]


def timed_readiness(gw: Gateway) -> tuple[int, float]:
    started = time.monotonic()
    status, _ = readiness(gw)
    return status, time.monotonic() - started


def problem_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line
            or line.startswith(("error ", "discarding ", "Traceback"))]


@pytest.mark.postgres
def test_postgres_outage_under_load_refuses_fast_and_logs_once(
        tmp_path: Path, digits_files: dict[str, Path], outage_db: str) -> None:
    """Every request during the outage is refused at once (none waits for a pool timeout),
    readiness answers within Kubernetes' 1 s probe timeout, and the log says once that each
    store went away and once that it came back; the refusals are counted, not logged."""
    with proxied_postgres(outage_db) as (proxy, url):
        models = [{"name": "digits", "backend": {"type": "skops",
                                                  "path": str(digits_files["skops"])}}]
        gw = Gateway(tmp_path, models, extra={
            "stores": {"keys": url}, "key_cache_ttl_s": 0.5,
            "quotas": {"budget_store": url,
                       "budgets": [{"queries": 1_000_000, "period": "month"}]}}).start()
        try:
            keys = [gw.key(principal=f"load-{i}-{secrets.token_hex(3)}") for i in range(4)]
            with Load(gw, keys) as load:
                time.sleep(1.0)
                cut_at = time.monotonic()  # before the cut: a refusal can land before the
                proxy.cut()                # next line of this thread runs
                time.sleep(2.5)
                ready_during = timed_readiness(gw)
                proxy.restore()
                restored_at = time.monotonic()
                deadline = restored_at + RECOVERY_S
                while time.monotonic() < deadline and not any(
                        a[1] == 200 for a in load.between(restored_at, deadline)):
                    time.sleep(0.05)
                time.sleep(0.5)
            ready_after = timed_readiness(gw)
            counted = store_errors(gw, "budget") + store_errors(gw, "keys")
            log = gw.log.read_text()
        finally:
            gw.stop()
    before = [a for a in load.between(0, cut_at) if a[0] + a[2] < cut_at]
    during = load.between(cut_at + 0.05, restored_at)
    refusals = [a for a in during if a[1] == 503]
    assert before and all(a[1] == 200 for a in before), {a[1] for a in before}
    assert {a[1] for a in during} == {503}, {a[1] for a in during}
    slowest = max(a[2] for a in load.between(cut_at, restored_at) if a[1] == 503)
    assert slowest < 1.0, f"a refusal waited {slowest:.2f} s ({len(refusals)} refusals)"
    assert ready_during[0] == 503 and ready_during[1] < 1.0, ready_during
    assert any(a[1] == 200 for a in load.between(restored_at, time.monotonic())), \
        "no recovery without a restart"
    assert ready_after[0] == 200, ready_after
    assert counted >= len(refusals)  # every refusal counted, though not logged
    lines = problem_lines(log)
    assert len(refusals) > 20 and len(lines) <= 4, \
        f"{len(refusals)} refusals, {len(lines)} warning/error lines:\n" + "\n".join(lines[:20])
    for store in ("budget", "key"):
        down = [li for li in lines if f"ERROR modelfence.stores: postgresql {store} store "
                "failed" in li]
        up = [li for li in log.splitlines()
              if f"INFO modelfence.stores: postgresql {store} store answers again" in li]
        assert len(down) <= 1 and len(up) == len(down), (store, down, up)
    assert any("store failed" in li for li in lines)


def chat(gw: Gateway, key: str) -> tuple[int, dict[str, Any], float]:
    """POST one /v1 chat completion; (status, body, seconds)."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    return post_json(gw, "/v1/chat/completions", json.dumps(body).encode(), key)


@pytest.mark.postgres
def test_v1_refusals_in_a_postgres_outage_are_fast_and_counted(
        tmp_path: Path, outage_db: str, stub: OpenAiStub) -> None:
    """/v1 calls need the budget store too (budgets and context.queries): refused at once,
    naming the store, counted in modelfence_store_errors_total like OIP refusals."""
    with proxied_postgres(outage_db) as (proxy, url):
        llm = {"models": [{"name": "chat", "upstream": stub.url, "upstream_model": "ok"}]}
        gw = Gateway(tmp_path, [], extra={"llm": llm, "quotas": {
            "budget_store": url, "budgets": [{"queries": 1000, "period": "month"}]}}).start()
        try:
            key = gw.key(models=["chat"])
            assert chat(gw, key)[0] == 200
            proxy.cut()
            for _ in range(5):
                status, doc, seconds = chat(gw, key)
                assert status == 503, doc
                assert doc["error"]["message"] == BUDGET_DOWN["error"]
                assert seconds < 1.0
                assert_no_secret(doc, key, "postgresql://", str(proxy.port))
            assert store_errors(gw, "budget") == 5
            proxy.restore()
            started = time.monotonic()
            while chat(gw, key)[0] != 200:
                assert time.monotonic() - started < RECOVERY_S, "no recovery without a restart"
                time.sleep(0.05)
        finally:
            gw.stop()


def metric(gw: Gateway, name: str) -> float:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


@pytest.mark.redis
def test_monitor_store_outage_keeps_answering_and_logs_once(
        tmp_path: Path, digits_files: dict[str, Path], redis_url: str,
        redis_proxy: TcpProxy) -> None:
    """The monitor's Redis is off the request's path: answers go on, observations are applied
    on this replica and counted, and the log says once that the store went and came back."""
    from .test_monitor_gateway import ask, monitored_gateway, thief_rows

    parts = urlsplit(redis_url)
    shared = urlunsplit(parts._replace(netloc=f"127.0.0.1:{redis_proxy.port}"))
    prefix = f"mftest:{secrets.token_hex(4)}:"
    gw = monitored_gateway(tmp_path, digits_files,
                           extra_monitor={"shared": shared, "key_prefix": prefix}).start()
    try:
        key = gw.key(principal=f"watched-{secrets.token_hex(3)}")
        assert ask(gw, key, thief_rows(1)).status_code == 200
        redis_proxy.cut()
        for i in range(20):
            r = ask(gw, key, thief_rows(1, seed=100 + i))
            assert r.status_code == 200, r.text
            time.sleep(0.02)  # one observation per batch: a line per batch would show
        deadline = time.monotonic() + 5
        while metric(gw, "modelfence_monitor_store_errors_total") < 1:
            assert time.monotonic() < deadline, "the monitor store's failures were not counted"
            time.sleep(0.05)
        redis_proxy.restore()
        log = wait_for_log(gw, "INFO modelfence.stores: monitor store answers again", 5.0)
        assert ask(gw, key, thief_rows(1, seed=99)).status_code == 200
    finally:
        gw.stop()
        forget_redis_keys(redis_url, prefix)
    failed = [li for li in log.splitlines() if "monitor store failed" in li]
    assert len(failed) == 1 and " WARNING " in failed[0], failed
    assert len([li for li in log.splitlines() if "monitor stream read failed" in li]) <= 1
    assert not [li for li in problem_lines(log) if " ERROR " in li or "Traceback" in li]
