"""What `audit.record_inputs` keeps: the decoded request in its canonical JSON, the same
for a JSON body, binary tensor data, a gzip or deflate body and a gRPC message, and never
the bytes of a body that did not decode."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest

from modelfence.audit.chain import entry_from_dict
from modelfence.audit.record import AuditGuard
from modelfence.audit.sinks import AuditSink
from modelfence.backends.call import OipCall
from modelfence.grpc import inference_pb2 as pb
from modelfence.grpc.tensors import decode_infer_request as decode_grpc
from modelfence.kernel.body import read_decoded
from modelfence.kernel.oip_binary import HEADER_LENGTH, decode_infer_body
from modelfence.llm.call import LlmCall, LlmEntry, LlmExchange
from modelfence.llm.settings import LlmModel

ROWS = np.asarray([[0.0, 0.25, 1.5], [2.0, -0.5, 3.75]], dtype=np.float32)
LABELS = ["a", "bé"]
#: the request as an OIP JSON client sends it; every other encoding below carries the same
JSON_DOC: dict[str, Any] = {
    "id": "req-7",
    "parameters": {"priority": 2},
    "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [2, 3], "data": ROWS.ravel().tolist()},
        {"name": "tag", "datatype": "BYTES", "shape": [2], "data": LABELS},
    ],
    "outputs": [{"name": "probabilities"}],
}


@dataclass
class Peer:
    host: str = "127.0.0.1"


@dataclass
class FakeRequest:
    """The request facts a body guard reads: headers and the body's chunks."""

    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    client: Peer | None = field(default_factory=Peer)

    async def stream(self) -> AsyncIterator[bytes]:
        yield self.body


class UnusedSink(AuditSink):
    async def write(self, record: Any) -> None:
        raise AssertionError("these tests only assemble records")


def assemble(call: Any, *, record_inputs: bool = True) -> dict[str, Any]:
    record = AuditGuard(UnusedSink(), record_inputs=record_inputs).assemble(call).to_dict()
    entry_from_dict(record, now=0.0)  # the chain can store it
    return record


async def oip_call(body: bytes, headers: Mapping[str, str] | None = None, *,
                   decode: Callable[[bytes], Any] | None = None) -> OipCall:
    """An OIP call whose body went through what the body guard does with it."""
    request = FakeRequest(body, dict(headers or {}))
    call = OipCall(request=request, action="infer", model_name="m")
    call.body = await read_decoded(request, 1 << 20)
    call.inputs = (decode(call.body) if decode is not None else
                   decode_infer_body(call.body, request.headers.get(HEADER_LENGTH)))
    return call


def binary_body() -> tuple[bytes, str]:
    """JSON_DOC with both inputs' data as raw bytes after the JSON header."""
    labels = b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in LABELS)
    head = {**JSON_DOC, "parameters": {"priority": 2, "binary_data_output": True},
            "inputs": [{k: v for k, v in t.items() if k != "data"} |
                       {"parameters": {"binary_data_size": size}}
                       for t, size in zip(JSON_DOC["inputs"], (ROWS.nbytes, len(labels)),
                                          strict=True)]}
    header = orjson.dumps(head)
    return header + ROWS.tobytes() + labels, str(len(header))


def grpc_message() -> bytes:
    msg = pb.ModelInferRequest(model_name="m", id="req-7")
    msg.parameters["priority"].int64_param = 2
    msg.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    msg.inputs.add(name="tag", datatype="BYTES", shape=[2])
    msg.outputs.add(name="probabilities")
    labels = b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in LABELS)
    msg.raw_input_contents.extend([ROWS.tobytes(), labels])
    return msg.SerializeToString()


async def test_every_encoding_records_the_json_request() -> None:
    json_body = orjson.dumps(JSON_DOC)
    expected = assemble(await oip_call(json_body))["inputs"]
    assert expected == JSON_DOC  # the canonical form is the JSON request itself

    binary, length = binary_body()
    deflated = zlib.compress(json_body)
    cases = {
        "binary": await oip_call(binary, {HEADER_LENGTH: length}),
        "gzip": await oip_call(gzip.compress(json_body), {"content-encoding": "gzip"}),
        "gzip binary": await oip_call(gzip.compress(binary), {"content-encoding": "gzip",
                                                              HEADER_LENGTH: length}),
        "deflate": await oip_call(deflated, {"content-encoding": "deflate"}),
        "grpc": await oip_call(grpc_message(),
                               decode=lambda b: decode_grpc(pb.ModelInferRequest.FromString(b))),
    }
    for name, call in cases.items():
        record = assemble(call)
        assert record["inputs"] == expected, name
        assert isinstance(record["inputs"], dict), name


async def test_the_record_never_holds_the_bytes_as_sent() -> None:
    binary, length = binary_body()
    record = assemble(await oip_call(binary, {HEADER_LENGTH: length}))
    text = orjson.dumps(record).decode()
    assert "\ufffd" not in text and "binary_data_size" not in text
    assert "binary_data_output" not in text  # the answer's encoding is not the request


async def test_a_body_that_did_not_decode_records_no_inputs() -> None:
    call = OipCall(request=FakeRequest(), action="infer", model_name="m")
    call.body = b"\x1f\x8b\x08garbage that never decoded\xff\xfe"
    call.status = 400
    record = assemble(call)
    assert record["inputs"] is None
    assert record["bytes_in"] == len(call.body) and record["input_sha256"]  # what was refused


async def test_inputs_stay_out_unless_asked_for() -> None:
    call = await oip_call(orjson.dumps(JSON_DOC))
    assert assemble(call, record_inputs=False)["inputs"] is None


async def test_inputs_that_cannot_be_shown_do_not_lose_the_record(
        caplog: pytest.LogCaptureFixture) -> None:
    call = await oip_call(orjson.dumps(JSON_DOC))
    assert call.inputs is not None
    call.inputs.inputs[0].data = np.asarray([1j])  # a complex number has no JSON form
    record = assemble(call)
    assert record["inputs"] is None and record["request_id"] == call.request_id
    assert "could not be recorded" in caplog.text


def llm_call(body: bytes, *, checked: bool) -> LlmCall:
    entry = LlmEntry(LlmModel(name="chat", upstream="http://127.0.0.1:1/v1/", upstream_model="up"))
    call = LlmCall(request=FakeRequest(body), action="chat", model_name="chat")
    call.body = body
    if checked:
        call.exchange = LlmExchange(entry, orjson.loads(body))
    return call


def test_an_llm_call_records_the_request_as_sent_not_as_changed() -> None:
    doc = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    call = llm_call(orjson.dumps(doc), checked=True)
    assert call.exchange is not None
    call.exchange.request["max_tokens"] = 4  # clamped later, and a canary may be added
    call.exchange.request["messages"].insert(0, {"role": "system", "content": "canary"})
    assert assemble(call)["inputs"] == doc
    assert assemble(llm_call(b"{not json", checked=False))["inputs"] is None
