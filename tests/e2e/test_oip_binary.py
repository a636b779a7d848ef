"""tritonclient's default requests through a real gateway to a local model: binary tensor
data both ways, gzip and deflate bodies, and the clear refusals of bodies it cannot read."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from ..support import Gateway, digits_rows
from .upstream_stub import UpstreamStub, stub_probabilities

MODEL = "digits"


@pytest.fixture(scope="module")
def key(local_gateway: Gateway) -> str:
    return local_gateway.key(principal="triton-user")


@pytest.fixture
def client(local_gateway: Gateway) -> Iterator[th.InferenceServerClient]:
    c = th.InferenceServerClient(local_gateway.url.removeprefix("http://"))
    yield c
    c.close()


def rows(n: int = 3) -> np.ndarray[Any, Any]:
    return np.asarray(digits_rows(n), dtype=np.float32)


def infer_input(data: np.ndarray[Any, Any], *, binary: bool = True) -> th.InferInput:
    tensor = th.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def json_answer(gateway: Gateway, key: str, data: np.ndarray[Any, Any]) -> dict[str, Any]:
    body = {"inputs": [{"name": "input", "shape": list(data.shape), "datatype": "FP32",
                        "data": data.tolist()}]}
    r = httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", json=body, headers=auth(key))
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}


def test_default_binary_request_gets_binary_outputs(
        local_gateway: Gateway, key: str, client: th.InferenceServerClient) -> None:
    data = rows()
    result = client.infer(MODEL, [infer_input(data)], headers=auth(key))
    expected = json_answer(local_gateway, key, data)
    proba = result.as_numpy("probabilities")
    assert proba.dtype == np.float32 and proba.shape == (3, 10)
    np.testing.assert_allclose(proba, expected["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    described = {o["name"]: o for o in result.get_response()["outputs"]}
    assert described["probabilities"]["parameters"]["binary_data_size"] == 3 * 10 * 4
    assert "data" not in described["probabilities"]


def test_requested_outputs_choose_binary_or_json_each(
        key: str, client: th.InferenceServerClient) -> None:
    outputs = [th.InferRequestedOutput("probabilities", binary_data=True),
               th.InferRequestedOutput("label", binary_data=False)]
    result = client.infer(MODEL, [infer_input(rows(2))], outputs=outputs, headers=auth(key))
    described = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "data" not in described["probabilities"] and len(described["label"]["data"]) == 2
    assert result.as_numpy("probabilities").shape == (2, 10)


def test_json_request_and_answer_are_unchanged(
        local_gateway: Gateway, key: str, client: th.InferenceServerClient) -> None:
    data = rows(2)
    outputs = [th.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")]
    result = client.infer(MODEL, [infer_input(data, binary=False)], outputs=outputs,
                          headers=auth(key))
    assert all("data" in o for o in result.get_response()["outputs"])
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               json_answer(local_gateway, key, data)["probabilities"], atol=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(key: str, client: th.InferenceServerClient, algorithm: str) -> None:
    data = rows(4)
    plain = client.infer(MODEL, [infer_input(data)], headers=auth(key))
    packed = client.infer(MODEL, [infer_input(data)], headers=auth(key),
                          request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)  # answered uncompressed
    np.testing.assert_array_equal(packed.as_numpy("probabilities"),
                                  plain.as_numpy("probabilities"))


def test_a_binary_body_the_gateway_cannot_read_says_why(
        key: str, client: th.InferenceServerClient) -> None:
    too_long = th.InferInput("input", [1, 64], "FP32")
    too_long.set_data_from_numpy(rows(2)[:1])
    too_long._raw_data += b"\0" * 8  # tritonclient lets a caller send more than the shape
    too_long._parameters["binary_data_size"] = len(too_long._raw_data)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [too_long], headers=auth(key))
    assert caught.value.status() == "400"
    assert "binary_data_size: 264 bytes, but 64 FP32 elements take 256" in str(caught.value)


def post(gateway: Gateway, key: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v2/models/{MODEL}/infer", content=body,
                      headers={**auth(key), **headers})


def binary_body(data: np.ndarray[Any, Any]) -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": "input", "shape": list(data.shape),
                                   "datatype": "FP32",
                                   "parameters": {"binary_data_size": data.nbytes}}]}).encode()
    return head + data.tobytes(), len(head)


def test_malformed_binary_bodies_through_the_gateway(local_gateway: Gateway, key: str) -> None:
    body, n = binary_body(rows(1))
    cases = [
        ({"Inference-Header-Content-Length": str(len(body) + 5)}, body,
         f"Inference-Header-Content-Length is {len(body) + 5} but the body holds only"),
        ({"Inference-Header-Content-Length": "-3"}, body,
         "Inference-Header-Content-Length must be a whole number of bytes"),
        ({"Inference-Header-Content-Length": str(n)}, body[:-4],
         "binary_data_size: 256 bytes, but only 252 bytes of binary data are left"),
        ({}, body, "a body with binary tensor data needs the header "
         "Inference-Header-Content-Length"),
    ]
    for headers, sent, message in cases:
        r = post(local_gateway, key, sent, **headers)
        assert r.status_code == 400, (headers, r.text)
        assert message in r.json()["error"], r.text
        assert "Traceback" not in r.text


def test_binary_nan_is_refused_like_json(local_gateway: Gateway, key: str) -> None:
    data = rows(1)
    data[0, 5] = np.nan
    body, n = binary_body(data)
    r = post(local_gateway, key, body, **{"Inference-Header-Content-Length": str(n)})
    assert r.status_code == 400 and "NaN or infinite values" in r.json()["error"]


def test_binary_batch_limit_applies(local_gateway: Gateway, key: str) -> None:
    body, n = binary_body(np.zeros((65, 64), dtype=np.float32))  # the model's max_batch is 64
    r = post(local_gateway, key, body, **{"Inference-Header-Content-Length": str(n)})
    assert r.status_code == 400 and "batch of 65 rows is over the limit of 64" in r.text


def test_a_decompression_bomb_is_413(local_gateway: Gateway, key: str) -> None:
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # the gateway's body limit is 256 KiB
    r = post(local_gateway, key, bomb, **{"Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    assert "inflates to more than the 262144 byte limit" in r.json()["error"]


def test_truncated_and_unknown_encodings(local_gateway: Gateway, key: str) -> None:
    body, n = binary_body(rows(1))
    r = post(local_gateway, key, gzip.compress(body)[:-12], **{
        "Content-Encoding": "gzip", "Inference-Header-Content-Length": str(n)})
    assert r.status_code == 400 and "the gzip data is truncated" in r.json()["error"]
    r = post(local_gateway, key, body, **{"Content-Encoding": "br"})
    assert r.status_code == 415 and "Content-Encoding 'br' is not supported" in r.text


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, UpstreamStub]]:
    """A gateway in front of the OIP upstream stub (tests/e2e/upstream_stub.py)."""
    with UpstreamStub() as stub:
        model = {"name": "up", "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]},
                 "backend": {"type": "oip", "url": stub.url, "upstream_model": "ok",
                             "probabilities_output": "predict_proba"}}
        gw = Gateway(tmp_path_factory.mktemp("gw-binary-upstream"), [model]).start()
        try:
            yield gw, stub
        finally:
            gw.stop()


def test_binary_client_behind_an_oip_upstream(upstream: tuple[Gateway, UpstreamStub]) -> None:
    """The upstream is sent the gateway's JSON; the client still gets the raw bytes it asked."""
    gw, stub = upstream
    client = th.InferenceServerClient(gw.url.removeprefix("http://"))
    data = rows(2)
    try:
        result = client.infer("up", [infer_input(data)], headers=auth(gw.key()))
    finally:
        client.close()
    (sent,) = stub.infer_requests("ok")[-1:]
    assert sent.content_type.startswith("application/json")
    (tensor,) = sent.body["inputs"]
    np.testing.assert_allclose(tensor["data"], data.ravel(), atol=1e-7)
    assert "parameters" not in tensor and "parameters" not in sent.body
    proba = result.as_numpy("probabilities")
    assert "data" not in result.get_response()["outputs"][0]
    np.testing.assert_allclose(proba, stub_probabilities(data), atol=1e-6)
