"""Findings to an HTTP collector on loopback: Splunk HEC's and a generic JSON receiver's
form, retries through an outage, refusals counted, the token never logged."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelfence.config.siem import SiemSettings
from modelfence.errors import ConfigurationError
from modelfence.kernel.metrics import GatewayMetrics
from modelfence.siem import Siem
from modelfence.siem.finding import download

from .receiver import Collector

TOKEN = "3f1c9a52-hec-token-never-logged"


def settings(tmp_path: Path, collector: Collector, kind: str = "hec",
             tls: dict[str, Any] | None = None, **extra: Any) -> SiemSettings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return SiemSettings.model_validate({
        "destinations": [{"type": kind, "name": "col", "url": collector.url,
                          "token_file": str(token), "timeout_s": 2, "tls": tls}],
        "spool_dir": str(tmp_path / "spool"), "retry_initial_s": 0.05, "retry_max_s": 0.3,
        "fsync": False, **extra})


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"destination": "col", **labels}) or 0.0


def events(collector: Collector) -> list[dict[str, Any]]:
    """Every HEC event the collector took, in order."""
    out = []
    for r in collector.received:
        out += [orjson.loads(line) for line in r.body.split(b"\n")]
    return out


async def test_hec_receives_authorised_events_within_two_seconds(tmp_path: Path) -> None:
    collector = Collector()
    await collector.start()
    metrics = GatewayMetrics()
    siem = Siem(settings(tmp_path, collector), metrics)
    await siem.start()
    try:
        started = time.monotonic()
        for i in range(3):
            siem.emit(download(f"insider{i}", "acme", "digits", "12 downloads at 03:00"))
        assert await siem.flush(2.0)
        assert time.monotonic() - started < 2.0
    finally:
        await siem.stop()
        await collector.stop()
    assert {r.headers["Authorization"] for r in collector.received} == {f"Splunk {TOKEN}"}
    got = events(collector)
    assert [e["event"]["actor"]["user"]["name"] for e in got] == ["insider0", "insider1",
                                                                    "insider2"]
    for e in got:
        assert e["sourcetype"] == "ocsf:detection_finding" and e["source"] == "modelfence"
        assert abs(e["time"] - time.time()) < 10  # seconds, as HEC wants
        assert e["event"]["class_uid"] == 2004
        assert e["event"]["finding_info"]["attacks"][0]["technique"]["uid"] == "AML.T0025"
    assert sample(metrics, "modelfence_siem_delivered_total") == 3


async def test_generic_json_receiver_gets_an_array_with_a_bearer_token(tmp_path: Path) -> None:
    collector = Collector(path="/ingest")
    await collector.start()
    siem = Siem(settings(tmp_path, collector, kind="json"), GatewayMetrics())
    await siem.start()
    try:
        siem.emit(download("bob", None, "digits", "unusual hour"))
        assert await siem.flush(2.0)
    finally:
        await siem.stop()
        await collector.stop()
    [r] = collector.received
    assert r.headers["Authorization"] == f"Bearer {TOKEN}"
    [doc] = orjson.loads(r.body)
    assert doc["class_uid"] == 2004 and doc["actor"]["user"]["name"] == "bob"


async def test_an_outage_delays_alerts_without_losing_or_repeating_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    collector = Collector(statuses=[503])  # down, then refusing once, then up
    metrics = GatewayMetrics()
    siem = Siem(settings(tmp_path, collector, max_batch=4), metrics)
    await siem.start()
    try:
        for i in range(10):
            siem.emit(download(f"p{i}", None, "digits", "volume"))
        await asyncio.sleep(0.8)  # several failed tries
        assert not collector.received
        await collector.start()
        assert await siem.flush(3.0)
    finally:
        await siem.stop()
        await collector.stop()
    names = [e["event"]["actor"]["user"]["name"] for e in events(collector)]
    assert names == [f"p{i}" for i in range(10)]  # each once, in order
    assert sample(metrics, "modelfence_siem_send_failures_total", reason="unreachable") >= 2
    assert sample(metrics, "modelfence_siem_send_failures_total", reason="status") == 1
    assert sample(metrics, "modelfence_siem_spool_bytes") == 0
    assert TOKEN not in caplog.text and "siem col" in caplog.text


async def test_alerts_spooled_before_a_restart_are_delivered_after_it(tmp_path: Path) -> None:
    collector = Collector()
    first = Siem(settings(tmp_path, collector), GatewayMetrics())
    await first.start()
    first.emit(download("early", None, "digits", "volume"))
    await asyncio.sleep(0.2)
    await first.stop()  # the collector never answered
    await collector.start()
    second = Siem(settings(tmp_path, collector), GatewayMetrics())
    await second.start()
    try:
        assert await second.flush(2.0)
    finally:
        await second.stop()
        await collector.stop()
    assert [e["event"]["actor"]["user"]["name"] for e in events(collector)] == ["early"]


async def test_a_refused_batch_is_dropped_and_counted(tmp_path: Path) -> None:
    collector = Collector(statuses=[400])
    await collector.start()
    metrics = GatewayMetrics()
    siem = Siem(settings(tmp_path, collector), metrics)
    await siem.start()
    try:
        siem.emit(download("a", None, "digits", "volume"))
        assert await siem.flush(2.0)
        siem.emit(download("b", None, "digits", "volume"))
        assert await siem.flush(2.0)
    finally:
        await siem.stop()
        await collector.stop()
    assert [e["event"]["actor"]["user"]["name"] for e in events(collector)] == ["b"]
    assert sample(metrics, "modelfence_siem_undelivered_total", reason="rejected") == 1
    assert sample(metrics, "modelfence_siem_delivered_total") == 1


async def test_an_llm_models_alert_carries_the_llm_techniques(tmp_path: Path) -> None:
    from modelfence.risk import Alert

    collector = Collector()
    await collector.start()
    siem = Siem(settings(tmp_path, collector), GatewayMetrics(), llm_models=frozenset({"chat"}))
    await siem.start()
    try:
        for model in ("chat", "digits"):
            siem.alert(Alert(model=model, kind="principal", subject="eve", tenant=None,
                             risk=0.8, queries=30, explanation="injection 0.55, volume 0.20"))
        assert await siem.flush(2.0)
    finally:
        await siem.stop()
        await collector.stop()
    llm, classic = (e["event"]["finding_info"]["attacks"][0]["technique"]["uid"]
                    for e in events(collector))
    assert (llm, classic) == ("AML.T0051.000", "AML.T0024.002")


async def test_an_unwritable_spool_refuses_to_start(tmp_path: Path) -> None:
    collector = Collector()
    (tmp_path / "spool").write_text("a file where the folder should be")
    siem = Siem(settings(tmp_path, collector), GatewayMetrics())
    with pytest.raises(ConfigurationError, match="cannot open its spool"):
        await siem.start()


async def test_https_collector_checked_against_the_configured_ca(tmp_path: Path) -> None:
    import ssl

    from ..rsyslog_daemon import make_certs

    certs = make_certs(tmp_path / "certs")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.cert, certs.key)
    collector = Collector(tls=tls)
    await collector.start()
    siem = Siem(settings(tmp_path, collector, tls={"ca_file": str(certs.ca)}),
                GatewayMetrics())
    untrusting = Siem(settings(tmp_path / "2", collector), GatewayMetrics())  # system CAs
    await siem.start()
    await untrusting.start()
    try:
        siem.emit(download("a", None, "digits", "volume"))
        untrusting.emit(download("b", None, "digits", "volume"))
        assert await siem.flush(2.0)
        assert not await untrusting.flush(0.5)
    finally:
        await siem.stop()
        await untrusting.stop(grace_s=0)
        await collector.stop()
    assert [e["event"]["actor"]["user"]["name"] for e in events(collector)] == ["a"]


async def test_a_full_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    collector = Collector()
    metrics = GatewayMetrics()
    siem = Siem(settings(tmp_path, collector, spool_max_bytes=8192), metrics)
    await siem.start()
    try:
        for i in range(20):  # about 1 KB each: the spool keeps the newest few
            siem.emit(download(f"p{i}", None, "digits", "volume"))
        await asyncio.sleep(0.3)
        await collector.start()
        assert await siem.flush(3.0)
    finally:
        await siem.stop()
        await collector.stop()
    names = [e["event"]["actor"]["user"]["name"] for e in events(collector)]
    dropped = sample(metrics, "modelfence_siem_undelivered_total", reason="spool_full")
    assert 0 < len(names) < 20 and len(names) + dropped == 20
    assert names == [f"p{i}" for i in range(20 - len(names), 20)]  # the newest, in order


async def test_a_collector_answering_an_endless_body_is_not_read_to_its_end(
        tmp_path: Path) -> None:
    """A 2xx whose body never ends (or is huge) counts as delivered once its status is in:
    at most 64 KiB of it is read, so it neither fills memory nor holds the sender."""
    done = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"
                         + b"x" * 100_000)
            await writer.drain()
            await done.wait()  # the rest of the body never comes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "token").write_text(TOKEN)
    cfg = SiemSettings.model_validate({
        "destinations": [{"type": "hec", "name": "col", "url": f"http://127.0.0.1:{port}/",
                          "token_file": str(tmp_path / "token"), "timeout_s": 5}],
        "spool_dir": str(tmp_path / "spool"), "retry_initial_s": 0.05, "fsync": False})
    metrics = GatewayMetrics()
    siem = Siem(cfg, metrics)
    await siem.start()
    try:
        started = time.monotonic()
        siem.emit(download("insider", "acme", "digits", "12 downloads at 03:00"))
        assert await siem.flush(3.0)
        assert time.monotonic() - started < 3.0
        assert sample(metrics, "modelfence_siem_delivered_total") == 1
    finally:
        await siem.stop()
        done.set()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # the handler closes its side before the loop ends
