"""Traces: a span per guard phase and per upstream call under each request's server span, the
W3C traceparent sent upstream, a caller's continued only when configured, no secret in any
span; and nothing of it (no import, the plain chain) while tracing is off.

Spans are read from the SDK's in-memory exporter; the upstream is a real HTTP server on
loopback. tests/e2e/test_tracing_gateway.py exports over OTLP/HTTP from a served gateway.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.testclient import TestClient

from modelfence.config import settings_from_mapping
from modelfence.config.tracing import TracingSettings
from modelfence.errors import ConfigurationError, Forbidden
from modelfence.gateway.app import build_app, build_gateway
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard, GuardChain
from modelfence.kernel.stages import Stages
from modelfence.kernel.traced import TracedGuardChain
from modelfence.tracing import build_tracing
from modelfence.tracing.otel import Tracing

from ..e2e.upstream_stub import UpstreamStub
from ..support import free_port

ADMIN_TOKEN = "admin-" + "t" * 30
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SPEC = {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
#: a value no span may carry: it is the request's tensor
MARK = 0.4242421
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                    "data": [MARK] + [0.5] * 63}]}
#: a caller's trace context (W3C example ids)
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}


# -- the chain's spans, without an app ----------------------------------------------------------

class Note(Guard[Call]):
    name = "note"

    async def on_request(self, call: Call) -> None:
        call.note(self.name, "allow")


class Deny(Guard[Call]):
    name = "deny"

    async def on_request(self, call: Call) -> None:
        raise Forbidden("not for you")


class Shape(Guard[Call]):
    name = "shape"

    async def on_response(self, call: Call) -> None:
        call.shaping_band = "strict"


class Count(Guard[Call]):
    name = "count"

    async def on_complete(self, call: Call) -> None:
        call.note(self.name, "note")


@dataclass
class Facts:
    headers: dict[str, str]
    client: None = None

    async def stream(self) -> Any:  # pragma: no cover - not read by these guards
        yield b""


def tracing(**settings: Any) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    made = build_tracing(TracingSettings(enabled=True, **settings), exporter=exporter)
    assert made is not None
    return made, exporter


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_each_guard_phase_and_the_backend_are_children_of_the_request_span() -> None:
    made, exporter = tracing()
    chain = Stages(head=[Count()], identity=[Note()], outputs=[Shape()],
                   spans=made.chain_spans()).chain(Call)
    call = Call(Facts({}), "infer", "m")

    async def backend(c: Call) -> None:
        c.status = 200

    with made.tracer.start_as_current_span("request") as request:
        await chain.run(call, backend)
        call.decision = "allow"
        await chain.complete(call)
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"request", "note request", "backend call", "shape response",
                          "count complete"}
    root = request.get_span_context().span_id
    for name in ("note request", "backend call", "shape response", "count complete"):
        assert parent_of(spans[name]) == root, name
        assert spans[name].context.trace_id == request.get_span_context().trace_id
    assert spans["note request"].attributes == {"modelfence.guard": "note",
                                                "modelfence.phase": "request"}
    done = spans["request"].attributes or {}
    assert done["modelfence.model"] == "m" and done["modelfence.decision"] == "allow"
    assert done["modelfence.shaping.band"] == "strict"
    assert done["modelfence.request_id"] == call.request_id


async def test_without_guard_spans_only_the_backend_call_has_one() -> None:
    made, exporter = tracing(guard_spans=False)
    chain = Stages(head=[Count()], identity=[Note()], outputs=[Shape()],
                   spans=made.chain_spans()).chain(Call)
    call = Call(Facts({}), "infer", "m")

    async def backend(c: Call) -> None:
        c.status = 200

    with made.tracer.start_as_current_span("request"):
        await chain.run(call, backend)
        await chain.complete(call)
    assert [s.name for s in exporter.get_finished_spans()] == ["backend call", "request"]
    assert [d.guard for d in call.trail] == ["note", "count"]  # every guard still ran
    assert call.shaping_band == "strict"


async def test_a_refusal_is_on_the_guard_that_refused_and_on_the_request() -> None:
    made, exporter = tracing()
    chain = Stages(identity=[Note()], policy=[Deny()], spans=made.chain_spans()).chain(Call)
    call = Call(Facts({}), "infer", "m")

    async def backend(c: Call) -> None:  # pragma: no cover - the policy refuses first
        raise AssertionError("the backend ran after a refusal")

    with made.tracer.start_as_current_span("request"), pytest.raises(Forbidden):
        await chain.run(call, backend)
    assert isinstance(call.error, Forbidden)  # as the plain chain records it
    with made.tracer.start_as_current_span("request"):
        await chain.complete(call)
    spans = [s for s in exporter.get_finished_spans() if s.name != "request"]
    assert [s.name for s in spans] == ["note request", "deny request"]
    assert spans[1].attributes is not None
    assert spans[1].attributes["modelfence.refusal.reason"] == "not for you"
    assert spans[1].attributes["modelfence.refusal.status"] == 403
    requests = [s for s in exporter.get_finished_spans() if s.name == "request"]
    assert requests[1].attributes is not None
    assert requests[1].attributes["modelfence.refusal.status"] == 403


async def test_without_a_request_span_the_chain_runs_untraced() -> None:
    """A call no request span covers (a gRPC call) starts no trace per guard."""
    made, exporter = tracing()
    chain = Stages(identity=[Note()], spans=made.chain_spans()).chain(Call)
    call = Call(Facts({}), "infer", "m")

    async def backend(c: Call) -> None:
        c.status = 200

    await chain.run(call, backend)
    await chain.complete(call)
    assert call.status == 200 and [d.guard for d in call.trail] == ["note"]
    assert exporter.get_finished_spans() == ()


def test_off_the_chain_is_the_plain_one_and_no_tracing_is_built() -> None:
    assert build_tracing(TracingSettings()) is None
    chain = Stages(identity=[Note()]).chain(Call)
    assert type(chain) is GuardChain
    made, _ = tracing()
    assert isinstance(Stages(identity=[Note()], spans=made.chain_spans()).chain(Call),
                      TracedGuardChain)


def test_without_the_extra_tracing_refuses_to_start_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def hidden(name: str, package: str | None = None) -> Any:
        if name.startswith("opentelemetry"):
            raise ModuleNotFoundError(f"No module named {name!r}", name="opentelemetry")
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(ConfigurationError, match=r"'otel' extra .*opentelemetry-sdk"):
        build_tracing(TracingSettings(enabled=True))


def test_the_settings_bound_the_ratio_and_need_an_http_endpoint() -> None:
    with pytest.raises(ValueError):
        TracingSettings(sample_ratio=1.5)
    with pytest.raises(ValueError):
        TracingSettings(endpoint="grpc://collector:4317")


# -- a gateway in-process, an OIP upstream on loopback -------------------------------------------

@dataclass
class Served:
    client: TestClient
    key: str
    stub: UpstreamStub
    exporter: InMemorySpanExporter

    def infer(self, headers: dict[str, str] | None = None, key: str | None = None,
              model: str = "ok") -> int:
        self.exporter.clear()
        answer = self.client.post(f"/v2/models/{model}/infer", json=BODY, headers={
            "Authorization": f"Bearer {key or self.key}", **(headers or {})})
        return answer.status_code

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture(scope="module")
def stub() -> Iterator[UpstreamStub]:
    with UpstreamStub() as running:
        yield running


def serve(folder: Path, stub: UpstreamStub, *, otlp: bool = False, grpc_port: int | None = None,
          **tracing_settings: Any) -> Iterator[Served]:
    """A gateway exporting to an in-memory exporter, or (`otlp`) over OTLP/HTTP as configured."""
    doc = {"server": {"admin_listen": None, "grpc_port": grpc_port},
           "stores": {"keys": f"sqlite:///{folder / 'keys.db'}"},
           "audit": {"sink": "none://", "disabled_acknowledged": True},
           "tracing": {"enabled": True, **tracing_settings},
           "models": [{"name": "ok", "input": SPEC, "backend": {
               "type": "oip", "url": stub.url, "probabilities_output": "predict_proba"}},
                      {"name": "gone", "input": SPEC, "backend": {
                          "type": "oip", "url": f"http://127.0.0.1:{free_port()}",
                          "connect_timeout_s": 0.5, "timeout_s": 1}}]}
    settings = settings_from_mapping(doc)
    exporter = InMemorySpanExporter()
    gw = build_gateway(settings, tracing=None if otlp else Tracing(settings.tracing,
                                                                   exporter=exporter))
    app = build_app(settings, gateway=gw)
    with TestClient(app) as client:
        admin = TestClient(app.state.admin_app)
        admin.portal = client.portal  # on the app's event loop
        key = admin.post("/admin/keys", headers=ADMIN, json={
            "principal": "p", "tenant": "t", "models": ["ok", "gone"]}).json()["key"]
        yield Served(client, key, stub, exporter)


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELFENCE_SECRET", "s" * 40)
        mp.setenv("MODELFENCE_ADMIN_TOKEN", ADMIN_TOKEN)
        yield


@pytest.fixture(scope="module")
def served(env: None, tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub
           ) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("traced"), stub)


def test_the_span_tree_of_an_infer_reaches_the_upstream(served: Served) -> None:
    assert served.infer(CALLER) == 200
    spans = served.spans()
    server = by_name([s for s in spans if s.kind == SpanKind.SERVER])[
        "POST /v2/models/{name}/infer"]
    trace_id = server.context.trace_id
    assert server.parent is None  # a caller's traceparent is not honoured by default
    assert f"{trace_id:032x}" != CALLER_TRACE
    assert all(s.context.trace_id == trace_id for s in spans)
    attrs = server.attributes or {}
    assert attrs["http.route"] == "/v2/models/{name}/infer"
    assert attrs["http.response.status_code"] == 200
    assert attrs["modelfence.model"] == "ok" and attrs["modelfence.decision"] == "allow"
    guards = [s for s in spans if s.attributes and "modelfence.guard" in s.attributes]
    names = {s.name for s in guards}
    assert {"identity request", "policy request", "backend call",
            "metrics complete"} <= names, names
    assert all(parent_of(s) == server.context.span_id for s in guards)
    upstream = by_name([s for s in spans if s.kind == SpanKind.CLIENT])["upstream POST"]
    backend = next(s for s in guards if s.name == "backend call")
    assert parent_of(upstream) == backend.context.span_id
    assert (upstream.attributes or {})["http.response.status_code"] == 200
    sent = served.stub.infer_requests("ok")[-1].traceparent
    assert sent is not None and sent[:-2] == f"00-{trace_id:032x}-{upstream.context.span_id:016x}-"
    assert int(sent[-2:], 16) & 1  # sampled


def test_no_span_carries_the_key_the_header_or_the_tensor(served: Served) -> None:
    assert served.infer(CALLER) == 200
    assert served.infer(key="mf_not-a-key-at-all") == 401
    text = json.dumps([json.loads(s.to_json()) for s in served.spans()])
    assert served.spans()
    for secret in (served.key, "mf_not-a-key-at-all", "Bearer", "authorization",
                   str(MARK), "0.424242"):
        assert secret.lower() not in text.lower(), secret


def test_a_refused_call_says_why_on_its_server_span(served: Served) -> None:
    assert served.infer(key="mf_not-a-key-at-all") == 401
    server = next(s for s in served.spans() if s.kind == SpanKind.SERVER)
    attrs = server.attributes or {}
    assert attrs["http.response.status_code"] == 401
    assert attrs["modelfence.refusal.status"] == 401 and attrs["modelfence.refusal.reason"]
    identity = next(s for s in served.spans() if s.name == "identity request")
    assert (identity.attributes or {})["modelfence.refusal.status"] == 401
    assert not [s for s in served.spans() if s.kind == SpanKind.CLIENT]  # never sent upstream


def test_a_callers_traceparent_is_continued_when_honoured(
        env: None, tmp_path: Path, stub: UpstreamStub) -> None:
    for honoured in serve(tmp_path, stub, honour_traceparent=True):
        assert honoured.infer(CALLER) == 200
        server = next(s for s in honoured.spans() if s.kind == SpanKind.SERVER)
        assert f"{server.context.trace_id:032x}" == CALLER_TRACE
        assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
        sent = stub.infer_requests("ok")[-1].traceparent
        assert sent is not None and sent.split("-")[1] == CALLER_TRACE
        # a caller that sampled its trace out is not recorded, and says so upstream
        assert honoured.infer({"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}) == 200
        assert honoured.spans() == []
        sent = stub.infer_requests("ok")[-1].traceparent
        assert sent is not None and sent.endswith("-00")
        # a malformed one is ignored: a trace of the gateway's own
        assert honoured.infer({"traceparent": f"00-{CALLER_TRACE}-zz-01"}) == 200
        server = next(s for s in honoured.spans() if s.kind == SpanKind.SERVER)
        assert server.parent is None and f"{server.context.trace_id:032x}" != CALLER_TRACE


def test_an_upstream_that_cannot_be_reached_is_an_error_span(served: Served) -> None:
    assert served.infer(model="gone") == 502
    upstream = next(s for s in served.spans() if s.kind == SpanKind.CLIENT)
    assert (upstream.attributes or {})["error.type"] == "ClientConnectorError"
    assert upstream.status.status_code == StatusCode.ERROR
    server = next(s for s in served.spans() if s.kind == SpanKind.SERVER)
    assert (server.attributes or {})["http.response.status_code"] == 502
    assert server.status.status_code == StatusCode.ERROR


def test_a_collector_that_is_down_holds_up_no_request(
        env: None, tmp_path: Path, stub: UpstreamStub) -> None:
    """Spans leave from the exporter's thread: with a collector that takes the connection and
    never answers, the answers are as usual, and stopping waits about the export timeout."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # connections wait in the backlog; nothing is ever read or answered
        began = time.monotonic()
        for down in serve(tmp_path, stub, otlp=True, export_timeout_s=0.5,
                          endpoint=f"http://127.0.0.1:{hung.getsockname()[1]}/v1/traces"):
            for _ in range(5):
                took = time.monotonic()
                assert down.infer() == 200
                assert time.monotonic() - took < 0.4
        assert time.monotonic() - began < 5


# -- the gRPC listener --------------------------------------------------------------------------

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def grpc_infer(port: int, key: str, metadata: tuple[tuple[str, str], ...] = ()
               ) -> grpc.StatusCode:
    from modelfence.grpc import inference_pb2 as pb

    message = pb.ModelInferRequest(model_name="ok", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 64],
        contents=pb.InferTensorContents(fp32_contents=[MARK] + [0.5] * 63))])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(MODEL_INFER,
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        try:
            call(message, timeout=5, metadata=(("authorization", f"Bearer {key}"), *metadata))
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


def test_a_grpc_infer_has_the_same_tree_under_its_call_span(
        env: None, tmp_path: Path, stub: UpstreamStub) -> None:
    port = free_port()
    for served in serve(tmp_path, stub, grpc_port=port, honour_traceparent=True):
        served.exporter.clear()  # the admin call that made the key
        assert grpc_infer(port, served.key, (("traceparent", CALLER["traceparent"]),)
                          ) == grpc.StatusCode.OK
        spans = served.spans()
        (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
        assert server.name == "inference.GRPCInferenceService/ModelInfer"
        assert f"{server.context.trace_id:032x}" == CALLER_TRACE
        attrs = server.attributes or {}
        assert attrs["rpc.grpc.status_code"] == 0 and attrs["modelfence.model"] == "ok"
        assert attrs["modelfence.decision"] == "allow"
        guards = [s for s in spans if s.attributes and "modelfence.guard" in s.attributes]
        assert {"identity request", "policy request", "backend call"} <= {s.name for s in guards}
        assert all(parent_of(s) == server.context.span_id for s in guards)
        (upstream,) = [s for s in spans if s.kind == SpanKind.CLIENT]
        assert parent_of(upstream) == next(
            s for s in guards if s.name == "backend call").context.span_id
        sent = stub.infer_requests("ok")[-1].traceparent
        assert sent is not None and sent.split("-")[1] == CALLER_TRACE
        text = json.dumps([json.loads(s.to_json()) for s in spans])
        assert served.key not in text and str(MARK) not in text and "0.424242" not in text

        served.exporter.clear()
        assert grpc_infer(port, "mf_not-a-key-at-all") == grpc.StatusCode.UNAUTHENTICATED
        # an abort's status can reach the client before the handler's span has ended
        deadline = time.monotonic() + 2
        while not any(s.kind == SpanKind.SERVER for s in served.spans()):
            assert time.monotonic() < deadline, "no server span for the refused call"
            time.sleep(0.01)
        (server,) = [s for s in served.spans() if s.kind == SpanKind.SERVER]
        attrs = server.attributes or {}
        assert attrs["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert attrs["modelfence.refusal.status"] == 401
        assert server.status.status_code != StatusCode.ERROR  # a refusal, not a failure
        text = json.dumps([json.loads(s.to_json()) for s in served.spans()])
        assert "mf_not-a-key-at-all" not in text and "bearer" not in text.lower()
