"""The OIP path and the OpenAI-compatible path answer alike where they used to drift.

One real gateway serves a classifier on an upstream OIP server (tests/e2e/upstream_stub.py)
and LLMs on an OpenAI-speaking one (tests/e2e/openai_stub.py): an upstream's 4xx reaches the
client with its reason but without the upstream's hidden model name, address or files; an
upstream's 429 is a 503 with Retry-After; the per-caller cap on open requests holds before
a body is read. Strict audit durability fails a call closed with the same answer on both
(in-process, with an audit sink that fails on purpose).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from modelfence.audit.record import AuditRecord
from modelfence.audit.sinks import AuditSink
from modelfence.config import settings_from_mapping
from modelfence.errors import StoreError
from modelfence.gateway.app import build_app, build_gateway
from modelfence.stores.keys import MemoryKeyStore

from ..support import Gateway, digits_rows, infer_body
from .openai_stub import OpenAiStub
from .upstream_stub import UpstreamStub

INPUT = {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
INTERNALS = ("internals", "fail-", "10.20.30.40", "127.0.0.1", "8080", "8001", "/srv",
             "triton-7", "safetensors", "model.onnx")
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def oip_model(name: str, url: str, upstream: str) -> dict[str, Any]:
    return {"name": name, "input": INPUT,
            "backend": {"type": "oip", "url": url, "upstream_model": upstream,
                        "timeout_s": 5, "probabilities_output": "predict_proba"}}


def llm_model(name: str, url: str, upstream: str) -> dict[str, Any]:
    return {"name": name, "upstream": url, "upstream_model": upstream}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        """The error message, in either protocol's error shape."""
        doc = json.loads(self.body)
        error = doc["error"]
        return str(error["message"] if isinstance(error, dict) else error)


def request(url: str, key: str, body: dict[str, Any]) -> Answer:
    req = urllib.request.Request(  # noqa: S310 (loopback)
        url, data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:  # noqa: S310 (loopback)
            return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


class Setup:
    def __init__(self, gateway: Gateway, ports: tuple[int, int]) -> None:
        self.gateway = gateway
        self.ports = ports
        self.key = gateway.key(models=[m["name"] for m in gateway.models]
                               + [m["name"] for m in gateway.extra["llm"]["models"]])

    def infer(self, model: str) -> Answer:
        return request(f"{self.gateway.url}/v2/models/{model}/infer", self.key,
                       infer_body(digits_rows(1)))

    def chat(self, model: str, *, stream: bool = False) -> Answer:
        return request(f"{self.gateway.url}/v1/chat/completions", self.key,
                       {"model": model, "stream": stream, **CHAT})

    def call(self, protocol: str, model: str) -> Answer:
        if protocol == "oip":
            return self.infer(model)
        return self.chat(model, stream=protocol == "llm-stream")


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, stub: OpenAiStub) -> Iterator[Setup]:
    with UpstreamStub() as oip:
        classifiers = [oip_model("classifier", oip.url, "internals"),
                       oip_model("busy-classifier", oip.url, "overloaded")]
        llms = [llm_model("assistant", stub.url, "fail-404"),
                llm_model("picky-assistant", stub.url, "fail-400"),
                llm_model("busy-assistant", stub.url, "fail-429")]
        gw = Gateway(tmp_path_factory.mktemp("parity"), classifiers,
                     extra={"llm": {"models": llms}}).start()
        try:
            yield Setup(gw, (oip.port, stub.port))
        finally:
            gw.stop()


PROTOCOLS = [("oip", "classifier"), ("llm", "assistant"), ("llm-stream", "assistant")]


@pytest.mark.parametrize(("protocol", "model"), PROTOCOLS)
def test_an_upstream_4xx_tells_its_reason_without_the_upstreams_internals(
        both: Setup, protocol: str, model: str) -> None:
    answer = both.call(protocol, model)
    assert answer.status == 404, answer.body
    message = answer.error()
    assert message.startswith("the upstream model server refused the request (status 404): ")
    assert f"{model} " in message  # the upstream named its model: the client reads its own
    text = answer.body.decode()
    for internal in (*INTERNALS, *(str(p) for p in both.ports)):
        assert internal not in text, f"{internal!r} reached the client: {text}"
    log = both.gateway.log.read_text()
    assert "10.20.30.40" in log or "fail-404" in log  # the details stay server-side


def test_an_llm_upstream_400_keeps_its_reason(both: Setup) -> None:
    answer = both.chat("picky-assistant")
    assert answer.status == 400
    doc = json.loads(answer.body)["error"]
    assert doc["type"] == "invalid_request_error" and doc["code"] == "upstream_rejected"
    assert doc["message"].startswith("the upstream model server refused the request "
                                     "(status 400): model picky-assistant at <address> failed")
    assert "fail-400" not in answer.body.decode()


@pytest.mark.parametrize(("protocol", "model"), [
    ("oip", "busy-classifier"), ("llm", "busy-assistant"), ("llm-stream", "busy-assistant")])
def test_an_upstream_429_is_a_503_with_retry_after(both: Setup, protocol: str,
                                                   model: str) -> None:
    """The upstream's capacity is not the caller's quota (upstream_status.busy says why)."""
    answer = both.call(protocol, model)
    assert answer.status == 503, answer.body
    assert answer.error() == "the upstream model server is busy; retry later"
    assert int(answer.headers["retry-after"]) >= 1
    if protocol != "oip":  # the OIP transport does not hand headers on (yet)
        assert answer.headers["retry-after"] == "7"  # the upstream's own hint


def test_upstream_busy_is_audited_alike(both: Setup) -> None:
    both.infer("busy-classifier")
    both.chat("busy-assistant")
    deadline = time.monotonic() + 5
    while True:
        records = [r for r in both.gateway.audit_records()
                   if r["model"] in ("busy-classifier", "busy-assistant")]
        if {r["model"] for r in records} == {"busy-classifier", "busy-assistant"}:
            break
        assert time.monotonic() < deadline, records
        time.sleep(0.05)
    assert {(r["status"], r["reason"]) for r in records} == {(503, "upstream_busy")}


# -- the cap on open requests holds before the body is read, on both paths -------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, stub: OpenAiStub) -> Iterator[Gateway]:
    with UpstreamStub() as oip:
        gw = Gateway(tmp_path_factory.mktemp("parity-capped"),
                     [oip_model("classifier", oip.url, "ok")],
                     extra={"llm": {"models": [llm_model("assistant", stub.url, "ok")]}})
        gw.extra["server"] = {"host": "127.0.0.1", "port": gw.port, "max_body_bytes": 65536,
                              "admin_listen": f"127.0.0.1:{gw.admin_port}",
                              "body_timeout_s": 60, "body_gap_timeout_s": 60,
                              "max_inflight_per_principal": 2}
        gw.start()
        try:
            yield gw
        finally:
            gw.stop()


def stalled(gw: Gateway, key: str, path: str) -> socket.socket:
    """A request that declares 100 body bytes and sends one."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n"
              "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
    return s


PATHS = {"oip": "/v2/models/classifier/infer", "llm": "/v1/chat/completions"}


@pytest.mark.parametrize("held_on", ["oip", "llm"])
def test_open_requests_are_capped_before_their_body_is_read(capped: Gateway,
                                                            held_on: str) -> None:
    key = capped.key(principal=f"slow-{held_on}", models=["classifier", "assistant"])
    held = [stalled(capped, key, PATHS[held_on]) for _ in range(2)]
    time.sleep(0.3)
    try:
        oip = request(f"{capped.url}{PATHS['oip']}", key, infer_body(digits_rows(1)))
        llm = request(f"{capped.url}{PATHS['llm']}", key, {"model": "assistant", **CHAT})
        for answer in (oip, llm):
            assert answer.status == 429, answer.body
            assert "too many requests in flight" in answer.error()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10  # the slots come back when the stalled clients leave
    while request(f"{capped.url}{PATHS['llm']}", key,
                  {"model": "assistant", **CHAT}).status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


# -- strict audit durability fails a call closed alike ----------------------------------------

ADMIN = "admin-" + "t" * 30


class BrokenSink(AuditSink):
    """Takes admin records, fails on every model call's."""

    async def write(self, record: AuditRecord) -> None:
        if record.action in ("infer", "chat"):
            raise StoreError("audit store down")


def test_strict_audit_refuses_alike_when_the_record_cannot_be_committed(
        tmp_path: Path, stub: OpenAiStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", ADMIN)
    with UpstreamStub() as oip:
        s = settings_from_mapping({
            "server": {"admin_listen": None},
            "audit": {"durability": "strict", "sink": "none://",
                      "disabled_acknowledged": True},
            "models": [oip_model("classifier", oip.url, "ok")],
            "llm": {"models": [llm_model("assistant", stub.url, "ok")]}}, base_dir=tmp_path)
        gw = build_gateway(s, key_store=MemoryKeyStore())
        gw.audit_sink = BrokenSink()
        with TestClient(build_app(s, gateway=gw)) as client:
            admin = TestClient(client.app.state.admin_app)  # type: ignore[attr-defined]
            admin.portal = client.portal
            key = admin.post("/admin/keys", json={
                "principal": "p", "tenant": "t", "models": ["classifier", "assistant"]},
                headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
            auth = {"Authorization": f"Bearer {key}"}
            oip_answer = client.post("/v2/models/classifier/infer",
                                     json=infer_body(digits_rows(1)), headers=auth)
            llm_answer = client.post("/v1/chat/completions",
                                     json={"model": "assistant", **CHAT}, headers=auth)
            metrics = admin.get("/metrics").text
    message = "the audit store is unavailable; request denied"
    assert oip_answer.status_code == llm_answer.status_code == 503
    assert oip_answer.json() == {"error": message}
    assert llm_answer.json() == {"error": {"message": message, "type": "api_error",
                                           "code": "store_unavailable"}}
    assert 'modelfence_store_errors_total{store="audit"} 2.0' in metrics
