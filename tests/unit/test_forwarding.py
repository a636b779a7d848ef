"""What an OIP upstream is sent: the gateway's canonical form of a validated request.

A fake transport records each request body, so every test reads exactly what would have
left the gateway; no network.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from modelfence.backends.oip_upstream import MAX_FORWARDED_ID_CHARS, OipUpstream
from modelfence.backends.transport import Answer, Transport
from modelfence.config import ModelSettings
from modelfence.errors import Unavailable, UpstreamError
from modelfence.kernel.oip import InferRequest, Tensor

GATEWAY_ID = re.compile(r"modelfence-[0-9a-f]{32}")
OK_ANSWER = orjson.dumps({"model_name": "digits", "outputs": [
    {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [3]}]})
OK = Answer(200, OK_ANSWER)


class Recording(Transport):
    """Answers every request with `answer` and keeps the decoded bodies it was sent."""

    def __init__(self, answer: Answer = OK) -> None:
        self.answer = answer
        self.sent: list[dict[str, Any]] = []

    async def request(self, method: str, url: str, body: bytes | None, timeout_s: float
                      ) -> Answer:
        assert body is not None
        self.sent.append(orjson.loads(body))
        return self.answer


def upstream(transport: Transport, **backend: Any) -> OipUpstream:
    settings = ModelSettings.model_validate({
        "name": "digits", "input": {"name": "input", "datatype": "FP32", "shape": [-1, 4]},
        "backend": {"type": "oip", "url": "http://127.0.0.1:1", **backend}})
    return OipUpstream(settings, transport)


def request(req_id: str | None = None, parameters: dict[str, Any] | None = None,
            input_parameters: dict[str, Any] | None = None,
            outputs: list[dict[str, Any]] | None = None) -> InferRequest:
    data = np.zeros((1, 4), dtype=np.float32)
    return InferRequest([Tensor("input", "FP32", [1, 4], data, input_parameters)], req_id,
                        parameters, outputs)


async def sent(req: InferRequest, **backend: Any) -> dict[str, Any]:
    transport = Recording()
    answer = await upstream(transport, **backend).infer(req)
    assert answer.outputs[0].name == "predict"
    (body,) = transport.sent
    return body


@pytest.mark.parametrize("client_id", [
    "req-1", "a", "550e8400-e29b-41d4-a716-446655440000", "trace id/7:x=1",
    "x" * MAX_FORWARDED_ID_CHARS,
])
async def test_a_safe_client_id_is_forwarded_as_sent(client_id: str) -> None:
    assert (await sent(request(client_id)))["id"] == client_id


@pytest.mark.parametrize("client_id", [
    "a\r\nX-Injected: 1",  # header injection; MLServer's server dropped the connection
    "\u2603 snow \u20ac",  # non-Latin-1: MLServer's handler crashed (500, connection closed)
    "caf\u00e9",  # Latin-1 but not ASCII
    " padded ", "trailing ", " leading",  # MLServer's server dropped the connection
    "a\x00b", "a\tb", "a\x7fb",  # control characters
    "x" * (MAX_FORWARDED_ID_CHARS + 1), "x" * 10_240,
    "",
])
async def test_an_unsafe_client_id_is_replaced_by_one_of_the_gateways_own(
        client_id: str) -> None:
    forwarded = (await sent(request(client_id)))["id"]
    assert GATEWAY_ID.fullmatch(forwarded), forwarded


async def test_without_a_client_id_the_upstream_gets_a_new_gateway_id_each_time() -> None:
    first, second = (await sent(request(None)))["id"], (await sent(request(None)))["id"]
    assert GATEWAY_ID.fullmatch(first) and GATEWAY_ID.fullmatch(second) and first != second


async def test_forward_request_id_false_never_sends_the_clients_id() -> None:
    forwarded = (await sent(request("req-1"), forward_request_id=False))["id"]
    assert GATEWAY_ID.fullmatch(forwarded)


async def test_only_allow_listed_parameters_with_plain_values_are_sent() -> None:
    req = request(
        "req-1",
        parameters={"trace": "t-1", "priority": 2, "other": "x", "content_type": "pd",
                    "headers": {"X": "1"}, "ratio": 0.5, "flag": True},
        input_parameters={"content_type": "str", "trace": {"deep": 1},
                          "_decoded_payload": [[1.0]], "priority": float("nan")},
        outputs=[{"name": "predict", "parameters": {"content_type": "str", "trace": "o",
                                                    "priority": ["a"]}}])
    body = await sent(req, forward_parameters=["trace", "priority", "ratio", "flag"])
    assert body == {
        "id": "req-1",
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                    "data": [0.0, 0.0, 0.0, 0.0]}],
        "parameters": {"trace": "t-1", "priority": 2, "ratio": 0.5, "flag": True},
        "outputs": [{"name": "predict", "parameters": {"trace": "o"}}],
    }


@pytest.mark.parametrize("value", [
    "a\r\nb", "x" * 257, {"nested": "x"}, ["list"], None, float("inf"),
])
async def test_an_allow_listed_parameter_with_a_value_that_is_not_plain_is_dropped(
        value: Any) -> None:
    body = await sent(request(parameters={"trace": value}), forward_parameters=["trace"])
    assert "parameters" not in body


async def test_by_default_no_parameter_is_forwarded() -> None:
    body = await sent(request(parameters={"trace": "t", "content_type": "np"},
                              input_parameters={"binary_data_size": 16}))
    assert "parameters" not in body and "parameters" not in body["inputs"][0]


async def test_a_classifier_upstream_is_asked_for_its_probabilities_output_only() -> None:
    transport = Recording(Answer(200, orjson.dumps({"model_name": "digits", "outputs": [
        {"name": "proba", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]}]})))
    model = upstream(transport, probabilities_output="proba", forward_parameters=["trace"])
    answer = await model.infer(request("req-1", outputs=[
        {"name": "label", "parameters": {"trace": "x", "content_type": "str"}}]))
    assert transport.sent[0]["outputs"] == [{"name": "proba"}]
    assert answer.id == "req-1"
    label = answer.output("label")
    assert label is not None and label.data.tolist() == [1]


@pytest.mark.parametrize(("names", "refused"), [
    (["content_type"], "content_type cannot be forwarded"),
    (["trace", "headers"], "headers cannot be forwarded"),
    (["_decoded_payload"], "_decoded_payload cannot be forwarded"),
    (["_anything"], "names starting with '_' are the upstream's own"),
])
def test_parameters_that_steer_the_upstream_cannot_be_allow_listed(
        names: list[str], refused: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(refused)):
        upstream(Recording(), forward_parameters=names)


@pytest.mark.parametrize(("retry_after", "seconds"), [("7", 7), (None, 5), ("soon", 5),
                                                      ("99999", 3600)])
async def test_an_upstream_429_is_a_503_with_the_upstreams_retry_after(
        retry_after: str | None, seconds: int) -> None:
    transport = Recording(Answer(429, b'{"error": "slow down"}', retry_after))
    with pytest.raises(Unavailable) as caught:
        await upstream(transport).infer(request("req-1"))
    assert caught.value.status == 503
    assert caught.value.retry_after_s == seconds
    assert caught.value.message == "the upstream model server is busy; retry later"


async def test_an_upstream_failure_is_logged_with_the_id_the_upstream_got(
        caplog: pytest.LogCaptureFixture) -> None:
    transport = Recording(Answer(500, b"Traceback (most recent call last): boom"))
    with pytest.raises(UpstreamError, match=r"failed \(status 500\)"):
        await upstream(transport).infer(request("a\r\nb"))
    forwarded = transport.sent[0]["id"]
    assert GATEWAY_ID.fullmatch(forwarded)
    assert f"(model digits, request id {forwarded})" in caplog.text
    assert "Traceback" not in caplog.text
