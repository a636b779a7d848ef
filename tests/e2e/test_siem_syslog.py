"""Findings into a real syslog daemon (Debian's rsyslogd, imtcp on loopback): an alert
arrives within 2 s as RFC 5424 with its ATLAS ids, over TCP and over TLS, and a daemon's
restart loses none."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelfence.config.siem import SiemSettings
from modelfence.kernel.metrics import GatewayMetrics
from modelfence.risk import Alert
from modelfence.siem import Siem
from modelfence.siem.finding import from_risk_alert

from ..rsyslog_daemon import Certs, Rsyslog, make_certs, require_rsyslogd

MSG = re.compile(r"^<\d+>1 \S+ \S+ modelfence \d+ finding \[modelfence@32473 (.*?)\] (\{.*\})$")


def thief(i: int = 0) -> Alert:
    return Alert(model="digits", kind="principal", subject=f"mallory{i}", tenant="shady",
                 risk=0.95, queries=40, explanation="uniform rows 0.95")


def siem_for(tmp_path: Path, daemon: Rsyslog, tls: dict[str, Any] | None = None) -> Siem:
    dest: dict[str, Any] = {"type": "syslog", "name": "rsyslog", "host": "127.0.0.1",
                            "port": daemon.port, "timeout_s": 2}
    if tls is not None:
        dest["tls"] = tls
    return Siem(SiemSettings.model_validate({
        "destinations": [dest], "spool_dir": str(tmp_path / "spool"),
        "retry_initial_s": 0.05, "retry_max_s": 0.3}), GatewayMetrics())


def parsed(line: str) -> tuple[str, dict[str, Any]]:
    m = MSG.match(line)
    assert m is not None, line[:300]
    return m[1], orjson.loads(m[2])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Rsyslog]:
    require_rsyslogd()
    d = Rsyslog(tmp_path / "rsyslog").start()
    yield d
    d.stop()


async def test_an_alert_reaches_rsyslog_within_two_seconds_with_its_atlas_ids(
        tmp_path: Path, daemon: Rsyslog) -> None:
    siem = siem_for(tmp_path, daemon)
    await siem.start()
    try:
        started = time.monotonic()
        siem.emit(from_risk_alert(thief(), llm=False))
        [line] = await asyncio.to_thread(daemon.wait_lines, 1, 2.0)
        elapsed = time.monotonic() - started
    finally:
        await siem.stop()
    assert elapsed < 2.0
    sd, doc = parsed(line)
    assert 'atlas="AML.T0024.002 AML.T0024 AML.T0040"' in sd and 'principal="mallory0"' in sd
    assert doc["class_uid"] == 2004
    assert doc["finding_info"]["attacks"][0]["technique"]["uid"] == "AML.T0024.002"


async def test_a_daemon_restart_loses_no_alert(tmp_path: Path, daemon: Rsyslog) -> None:
    siem = siem_for(tmp_path, daemon)
    await siem.start()
    try:
        siem.emit(from_risk_alert(thief(0), llm=False))
        await asyncio.to_thread(daemon.wait_lines, 1)  # connected and delivering
        daemon.stop()
        for i in range(1, 6):
            siem.emit(from_risk_alert(thief(i), llm=False))
        await asyncio.sleep(0.5)  # tries fail meanwhile
        await asyncio.to_thread(daemon.start)
        lines = await asyncio.to_thread(daemon.wait_lines, 6, 3.0)
        await asyncio.sleep(0.3)  # and no repeat arrives late
        lines = daemon.lines()
    finally:
        await siem.stop()
    subjects = [parsed(line)[1]["actor"]["user"]["name"] for line in lines]
    assert subjects == [f"mallory{i}" for i in range(6)]


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[tuple[Rsyslog, Certs]]:
    require_rsyslogd(tls=True)
    certs = make_certs(tmp_path / "certs")
    d = Rsyslog(tmp_path / "rsyslog-tls", certs=certs).start()
    yield d, certs
    d.stop()


async def test_an_alert_reaches_rsyslog_over_tls_and_not_to_an_untrusted_one(
        tmp_path: Path, tls_daemon: tuple[Rsyslog, Certs]) -> None:
    daemon, certs = tls_daemon
    siem = siem_for(tmp_path, daemon, tls={"ca_file": str(certs.ca),
                                           "server_name": "localhost"})
    await siem.start()
    try:
        siem.emit(from_risk_alert(thief(), llm=False))
        [line] = await asyncio.to_thread(daemon.wait_lines, 1, 2.0)
    finally:
        await siem.stop()
    assert "AML.T0024.002" in parsed(line)[0]

    other = make_certs(tmp_path / "other")  # a CA that did not sign the daemon's cert
    untrusting = siem_for(tmp_path / "2", daemon, tls={"ca_file": str(other.ca)})
    await untrusting.start()
    try:
        untrusting.emit(from_risk_alert(thief(1), llm=False))
        assert not await untrusting.flush(0.5)
    finally:
        await untrusting.stop()
    assert len(daemon.lines()) == 1


async def test_a_daemon_that_asks_for_a_client_certificate_gets_the_configured_one(
        tmp_path: Path) -> None:
    require_rsyslogd(tls=True)
    certs = make_certs(tmp_path / "certs")
    daemon = Rsyslog(tmp_path / "rsyslog-mtls", certs=certs, client_certs=True).start()
    ca = {"ca_file": str(certs.ca), "server_name": "localhost"}
    with_cert = siem_for(tmp_path / "1", daemon, tls={
        **ca, "cert_file": str(certs.cert), "key_file": str(certs.key)})
    without = siem_for(tmp_path / "2", daemon, tls=ca)
    await with_cert.start()
    await without.start()
    try:
        without.emit(from_risk_alert(thief(0), llm=False))
        with_cert.emit(from_risk_alert(thief(1), llm=False))
        [line] = await asyncio.to_thread(daemon.wait_lines, 1, 2.0)
        await asyncio.sleep(0.5)
        assert len(daemon.lines()) == 1
        assert len(without.outboxes[0].spool) == 1  # refused, so still waiting
    finally:
        await with_cert.stop()
        await without.stop(grace_s=0)
        daemon.stop()
    assert parsed(line)[1]["actor"]["user"]["name"] == "mallory1"
