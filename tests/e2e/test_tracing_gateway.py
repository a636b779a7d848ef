"""Traces from a served gateway, exported over OTLP/HTTP by the SDK's real exporter to a
receiver on loopback (tests/e2e/otlp_receiver.py): the span tree of an OIP infer and of an
LLM chat (server span → guard spans → upstream span), the traceparent each upstream received,
a caller's trace continued (`honour_traceparent`), an admin request's span, and no secret in
anything exported.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ..support import Gateway
from .openai_stub import OpenAiStub
from .otlp_receiver import OtlpReceiver, Span
from .upstream_stub import UpstreamStub

SERVER, CLIENT = 2, 3  # OTLP span kinds
SPEC = {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
MARK = 0.4242421  # a tensor value no span may carry
PROMPT = "the quiet heron counts seventeen lanterns"  # a prompt no span may carry
UPSTREAM_KEY = "sk-upstream-otel-" + "q" * 20


@dataclass
class Setup:
    gateway: Gateway
    receiver: OtlpReceiver
    oip: UpstreamStub
    llm: OpenAiStub
    key: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, stub: OpenAiStub) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("gw-tracing")
    (folder / "upstream-key").write_text(UPSTREAM_KEY)
    receiver = OtlpReceiver().start()
    with UpstreamStub() as oip, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # the batch leaves within 50 ms
        gw = Gateway(folder, [{"name": "ok", "input": SPEC, "backend": {
            "type": "oip", "url": oip.url, "probabilities_output": "predict_proba"}}],
            extra={"tracing": {"enabled": True, "endpoint": receiver.url,
                               "service_name": "gw-under-test", "honour_traceparent": True},
                   "llm": {"models": [{"name": "chat", "upstream": stub.url,
                                       "api_key_file": "upstream-key"}]}}).start()
        try:
            yield Setup(gw, receiver, oip, stub, gw.key(models=["ok", "chat"]))
        finally:
            gw.stop()
            receiver.stop()


def trace_of(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id]


def complete(trace_id: str, server: str) -> Callable[[list[Span]], bool]:
    """Whether the trace's server span (which ends last) and its upstream span arrived."""
    def found(spans: list[Span]) -> bool:
        mine = trace_of(spans, trace_id)
        return (any(s.kind == SERVER and s.name == server for s in mine)
                and any(s.kind == CLIENT for s in mine))
    return found


def check_tree(spans: list[Span], server_name: str) -> tuple[Span, Span]:
    """server → guards (+ backend) → upstream; returns the server and upstream spans."""
    (server,) = [s for s in spans if s.kind == SERVER]
    assert server.name == server_name and server.service == "gw-under-test"
    guards = [s for s in spans if "modelfence.guard" in s.attributes]
    assert {"identity request", "policy request", "backend call",
            "metrics complete"} <= {s.name for s in guards}
    assert all(s.parent_id == server.span_id for s in guards)
    (upstream,) = [s for s in spans if s.kind == CLIENT]
    (backend,) = [s for s in guards if s.name == "backend call"]
    assert upstream.parent_id == backend.span_id
    assert upstream.attributes["http.response.status_code"] == 200
    return server, upstream


def infer(setup: Setup, headers: dict[str, str]) -> None:
    answer = httpx.post(f"{setup.gateway.url}/v2/models/ok/infer", json={"inputs": [{
        "name": "input", "shape": [1, 64], "datatype": "FP32", "data": [MARK] + [0.5] * 63}]},
        headers={"Authorization": f"Bearer {setup.key}", **headers})
    assert answer.status_code == 200, answer.text


def chat(setup: Setup) -> dict[str, Any]:
    """What the LLM upstream received for a chat."""
    answer = httpx.post(f"{setup.gateway.url}/v1/chat/completions", json={
        "model": "chat", "messages": [{"role": "user", "content": PROMPT}]},
        headers={"Authorization": f"Bearer {setup.key}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return setup.llm.received[-1]


def test_an_infer_continues_the_callers_trace_to_the_upstream(setup: Setup) -> None:
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    infer(setup, {"traceparent": f"00-{caller_trace}-{caller_span}-01"})
    spans = trace_of(setup.receiver.wait_for(
        complete(caller_trace, "POST /v2/models/{name}/infer")), caller_trace)
    server, upstream = check_tree(spans, "POST /v2/models/{name}/infer")
    assert server.parent_id == caller_span
    assert server.attributes["modelfence.model"] == "ok"
    assert server.attributes["http.response.status_code"] == 200
    sent = setup.oip.infer_requests("ok")[-1].traceparent
    assert sent is not None and sent.split("-")[1:3] == [caller_trace, upstream.span_id]


def test_an_llm_chat_is_traced_to_its_upstream(setup: Setup) -> None:
    sent = chat(setup)
    assert sent["_auth"] == f"Bearer {UPSTREAM_KEY}"
    trace_id = sent["_traceparent"].split("-")[1]
    spans = trace_of(setup.receiver.wait_for(
        complete(trace_id, "POST /v1/chat/completions")), trace_id)
    server, upstream = check_tree(spans, "POST /v1/chat/completions")
    assert server.parent_id == ""  # no traceparent sent: a trace of its own
    assert server.attributes["modelfence.model"] == "chat"
    assert sent["_traceparent"].split("-")[2] == upstream.span_id


def test_a_streamed_chat_is_one_server_span_until_its_end(setup: Setup) -> None:
    with httpx.stream("POST", f"{setup.gateway.url}/v1/chat/completions", json={
            "model": "chat", "stream": True, "messages": [{"role": "user", "content": PROMPT}]},
            headers={"Authorization": f"Bearer {setup.key}"}, timeout=10) as answer:
        assert answer.status_code == 200
        events = [line for line in answer.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    trace_id = setup.llm.received[-1]["_traceparent"].split("-")[1]
    spans = trace_of(setup.receiver.wait_for(
        complete(trace_id, "POST /v1/chat/completions")), trace_id)
    server, _ = check_tree(spans, "POST /v1/chat/completions")
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["modelfence.decision"] == "allow"


def test_an_admin_request_has_its_span(setup: Setup) -> None:
    answer = httpx.get(f"{setup.gateway.admin_url}/admin/keys",
                       headers={"Authorization": f"Bearer {setup.gateway.admin_token}"})
    assert answer.status_code == 200
    setup.receiver.wait_for(lambda spans: any(
        s.name == "GET /admin/keys" and s.attributes["http.response.status_code"] == 200
        for s in spans))


def test_nothing_exported_carries_a_secret(setup: Setup) -> None:
    """The raw OTLP bodies of an infer, a chat, an admin call and a refusal, scanned."""
    trace_id = secrets.token_hex(16)
    infer(setup, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    chat_trace = chat(setup)["_traceparent"].split("-")[1]
    httpx.get(f"{setup.gateway.admin_url}/admin/keys",
              headers={"Authorization": f"Bearer {setup.gateway.admin_token}"})
    setup.receiver.wait_for(complete(trace_id, "POST /v2/models/{name}/infer"))
    setup.receiver.wait_for(complete(chat_trace, "POST /v1/chat/completions"))
    refused = httpx.post(f"{setup.gateway.url}/v2/models/ok/infer", json={},
                         headers={"Authorization": "Bearer mf_made-up-key-otel"})
    assert refused.status_code == 401
    spans = setup.receiver.wait_for(lambda spans: any(
        s.kind == SERVER and s.attributes.get("http.response.status_code") == 401
        for s in spans))
    assert any("modelfence.refusal.reason" in s.attributes for s in spans)
    raw = b"".join(setup.receiver.bodies)
    decoded = json.dumps([s.attributes for s in spans]).lower()
    for secret in (setup.key, "mf_made-up-key-otel", setup.gateway.admin_token, UPSTREAM_KEY,
                   PROMPT, str(MARK), "bearer", "authorization"):
        assert secret.encode() not in raw and secret.lower() not in decoded, secret
