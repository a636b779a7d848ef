"""The audit log on PostgreSQL taken away under load: no answered call loses its record.

The gateway reaches PostgreSQL through a loopback proxy (tests/tcp_proxy.py) that the test
cuts and restores. While the store is away the writer spills batches to local disk and
keeps answering; once it is back the spill is replayed in order, before newer records,
so the chain verifies and every answered call has its record. A spill that fills up
refuses calls (503) and readiness says not ready; a gateway stopped during the outage
leaves its spill to the next start, and `audit verify` says records are pending.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ..outage_support import ClientThreads, postgres_via, proxied_postgres, scratch_database
from ..support import Gateway, cli, digits_rows, infer_body
from ..tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

BODY = json.dumps(infer_body(digits_rows(1))).encode()


def post(gw: Gateway, key: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        f"{gw.url}/v2/models/digits/infer", data=BODY, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 (loopback only)
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def ready(gw: Gateway) -> int:
    try:
        with urllib.request.urlopen(f"{gw.url}/v2/health/ready", timeout=5) as r:  # noqa: S310
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def metric(gw: Gateway, name: str) -> float:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


class Load(ClientThreads):
    """Clients sending inferences in a loop from threads, counting answers by status."""

    join_s = 30.0

    def __init__(self, gw: Gateway, key: str, clients: int = 4) -> None:
        super().__init__([key] * clients)
        self._gw, self._key = gw, key
        self.statuses: list[int] = []

    def send(self, key: str) -> None:
        self.statuses.append(post(self._gw, key)[0])
        time.sleep(0.01)


def recorded(url: str, principal: str) -> dict[int, int]:
    """Audit records of `principal`'s inferences, by status, straight from PostgreSQL."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT status, count(*) FROM modelfence_audit WHERE principal = %s "
                            "AND action = 'infer' GROUP BY status", (principal,)).fetchall()
    return {int(s): int(n) for s, n in rows}


def until(check: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def audit_db(pg_url: str) -> Iterator[str]:
    """A database of its own: the chain starts empty."""
    with scratch_database(pg_url, "mf_audit_outage") as url:
        yield url


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    with proxied_postgres(pg_url) as (p, _):
        yield p


def gateway(folder: Path, digits: dict[str, Path], direct_url: str, proxy: TcpProxy,
            workers: int = 1, **audit: Any) -> Gateway:
    via_proxy = postgres_via(direct_url, proxy)
    cli("audit", "keygen", "--out", str(folder / "cp.pem"))
    gw = Gateway(folder, [{"name": "digits", "backend": {
        "type": "skops", "path": str(digits["skops"])}}], extra={
        "audit": {"sink": via_proxy, "checkpoint_key_file": "cp.pem", **audit}})
    if workers > 1:  # each worker spills to a file of its own; /metrics sums them
        gw.extra["server"] = {"host": "127.0.0.1", "port": gw.port, "workers": workers,
                              "admin_listen": f"127.0.0.1:{gw.admin_port}"}
    return gw


@pytest.mark.parametrize("workers", [1, 2])
def test_an_outage_under_load_loses_no_record_of_an_answered_call(
        tmp_path: Path, digits_files: dict[str, Path], audit_db: str, proxy: TcpProxy,
        workers: int) -> None:
    tmp_path.mkdir(exist_ok=True)
    gw = gateway(tmp_path, digits_files, audit_db, proxy, workers).start()
    principal = f"load-{secrets.token_hex(3)}"
    try:
        key = gw.key(principal=principal)
        with Load(gw, key) as load:
            time.sleep(1.0)
            proxy.cut()
            time.sleep(3.0)
            during = list(load.statuses)
            ready_during = ready(gw)
            until(lambda: metric(gw, "modelfence_audit_spill_records") > 0)
            spilled = metric(gw, "modelfence_audit_spilled_records_total")
            proxy.restore()
            time.sleep(1.5)
        until(lambda: metric(gw, "modelfence_audit_spill_records") == 0)
        replayed = metric(gw, "modelfence_audit_replayed_records_total")
        assert metric(gw, "modelfence_audit_spill_bytes") == 0
    finally:
        gw.stop()
    answered = load.statuses.count(200)
    assert set(load.statuses) == {200} and len(during) > 20  # the outage refused nobody
    assert ready_during == 200  # a spill with room is no reason to leave the load balancer
    assert spilled > 0 and replayed >= spilled
    assert recorded(audit_db, principal) == {200: answered}
    report = json.loads(cli("audit", "verify", "--config", str(gw.config), "--json").stdout)
    assert report["ok"] and report["pending_replay"] == 0 and report["signatures_checked"]
    log = gw.log.read_text()
    assert log.count("audit store cannot take records") == workers, log[-3000:]  # once each
    assert log.count("audit store answers again") == workers
    assert "audit records lost" not in log and "Traceback" not in log
    assert not list((tmp_path / "audit-spill").glob("spill-*.log"))


def test_a_full_spill_refuses_calls_and_readiness_until_the_store_is_back(
        tmp_path: Path, digits_files: dict[str, Path], audit_db: str, proxy: TcpProxy) -> None:
    tmp_path.mkdir(exist_ok=True)
    gw = gateway(tmp_path, digits_files, audit_db, proxy, spill_max_bytes=30_000).start()
    principal = f"full-{secrets.token_hex(3)}"
    answered = refused = 0
    try:
        key = gw.key(principal=principal)
        assert post(gw, key)[0] == 200
        answered += 1
        proxy.cut()
        for _ in range(400):
            status, doc = post(gw, key)
            if status == 503:
                assert doc == {"error": "the audit store is unavailable; request denied"}
                refused += 1
                break
            assert status == 200, doc
            answered += 1
        assert refused, "the spill never filled"
        assert ready(gw) == 503
        proxy.restore()
        until(lambda: post(gw, key)[0] == 200)
        answered += 1
        assert ready(gw) == 200
        until(lambda: metric(gw, "modelfence_audit_spill_records") == 0)
    finally:
        gw.stop()
    assert recorded(audit_db, principal).get(200) == answered
    log = gw.log.read_text()
    assert log.count("calls are refused (503)") == 1, log[-3000:]
    assert "Traceback" not in log


@pytest.mark.parametrize("stop", ["term", "kill"])
def test_a_gateway_stopped_during_an_outage_replays_its_spill_at_start(
        tmp_path: Path, digits_files: dict[str, Path], audit_db: str, proxy: TcpProxy,
        stop: str) -> None:
    """Stopped, or killed: with `durability: strict` an answer leaves only once its record
    is committed or fsync'd in the spill, so a SIGKILL loses none either."""
    tmp_path.mkdir(exist_ok=True)
    gw = gateway(tmp_path, digits_files, audit_db, proxy,
                 durability="strict" if stop == "kill" else "batched").start()
    principal = f"restart-{secrets.token_hex(3)}"
    try:
        key = gw.key(principal=principal)
        statuses = [post(gw, key)[0] for _ in range(5)]
        proxy.cut()
        statuses += [post(gw, key)[0] for _ in range(30)]
        if stop == "kill":
            gw.kill()
    finally:
        gw.stop()  # the store is still away: the spill stays on disk
    assert statuses == [200] * 35
    if stop == "term":
        assert "they are replayed when the gateway starts again" in gw.log.read_text()
    proxy.restore()
    pending = cli("audit", "verify", "--config", str(gw.config), check=False)
    assert pending.returncode == 3, pending.stdout + pending.stderr
    assert re.search(r"INCOMPLETE \d+ records pending replay", pending.stdout), pending.stdout
    assert json.loads(cli("audit", "verify", "--config", str(gw.config), "--json",
                          check=False).stdout)["ok"] is False

    gw.start()
    try:
        until(lambda: metric(gw, "modelfence_audit_spill_records") == 0)
        assert post(gw, key)[0] == 200
    finally:
        gw.stop()
    assert recorded(audit_db, principal) == {200: 36}
    report = json.loads(cli("audit", "verify", "--config", str(gw.config), "--json").stdout)
    assert report["ok"] and report["pending_replay"] == 0
