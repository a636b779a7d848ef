"""The OIP gRPC service through the gateway, driven by tritonclient.grpc 2.73 (default
settings: raw tensor contents), behind the same guards as REST: health, server and model
metadata, model readiness and infer to a local model and to MLServer's gRPC server as the
upstream; the key in `authorization` metadata; refusals with REST's messages; audit records.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import joblib
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from modelfence.grpc import inference_pb2 as pb

from ..support import Gateway, digits_rows, free_port
from .mlserver_fixture import MLServer

pytestmark = pytest.mark.mlserver

ROWS = np.asarray(digits_rows(8), dtype=np.float32)
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path],
            mlserver: MLServer) -> Iterator[Gateway]:
    skops = {"type": "skops", "path": str(digits_files["skops"])}
    digits_input = {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    upstream = {"type": "oip", "url": f"grpc://127.0.0.1:{mlserver.grpc_port}",
                "upstream_model": "digits", "timeout_s": 10}
    models = [
        {"name": "digits", "backend": skops, "limits": {"max_batch": 64}},
        {"name": "digits-small", "backend": skops, "limits": {"max_body_bytes": 1024}},
        {"name": "mls", "backend": {**upstream, "probabilities_output": "predict_proba"},
         "input": digits_input},
        {"name": "mls-raw", "backend": upstream, "input": digits_input},
        {"name": "ghost", "backend": {**upstream, "upstream_model": "nope"},
         "input": digits_input},
    ]
    gw = Gateway(tmp_path_factory.mktemp("gw-oip-grpc"), models)
    grpc_port = free_port()
    gw.extra = {"server": {"host": "127.0.0.1", "port": gw.port, "max_body_bytes": 256 * 1024,
                           "admin_listen": f"127.0.0.1:{gw.admin_port}",
                           "grpc_port": grpc_port}}
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def grpc_url(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.extra['server']['grpc_port']}"


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.key()


@pytest.fixture(scope="module")
def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture()
def client(grpc_url: str) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=grpc_url)
    try:
        yield c
    finally:
        c.close()


def infer(client: triton.InferenceServerClient, model: str, headers: dict[str, str] | None,
          rows: np.ndarray[Any, Any] = ROWS, name: str = "input") -> triton.InferResult:
    tensor = triton.InferInput(name, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer(model, [tensor], headers=headers, client_timeout=20)


def refusal(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def rest_error(gateway: Gateway, model: str, body: dict[str, Any], key: str | None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{gateway.url}/v2/models/{model}/infer", json=body, headers=headers,
                   timeout=10)
    return str(r.json()["error"])


# -- health and metadata --------------------------------------------------------------------


def test_health_and_server_metadata_answer_without_a_key(
        client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "modelfence" and meta["version"]
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_readiness_with_a_key(client: triton.InferenceServerClient,
                                                 auth: dict[str, str]) -> None:
    assert client.is_model_ready("digits", headers=auth)
    meta = client.get_model_metadata("digits", headers=auth, as_json=True)
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]


def test_metadata_without_a_key_is_unauthenticated(
        client: triton.InferenceServerClient) -> None:
    err = refusal(lambda: client.get_model_metadata("digits"))
    assert err.status() == "StatusCode.UNAUTHENTICATED"
    assert err.message() == "missing or invalid credentials"
    err = refusal(lambda: client.is_model_ready("digits"))
    assert err.status() == "StatusCode.UNAUTHENTICATED"


# -- infer to a local model -----------------------------------------------------------------


def test_infer_equals_the_models_own_predict_proba(
        client: triton.InferenceServerClient, auth: dict[str, str],
        digits_files: dict[str, Path]) -> None:
    result = infer(client, "digits", auth)
    model = joblib.load(digits_files["joblib"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.predict_proba(ROWS),
                               atol=1e-5)
    assert result.as_numpy("label").tolist() == model.predict(ROWS).tolist()
    assert result.get_response().model_name == "digits"


def test_typed_contents_answer_typed_and_equal_raw(grpc_url: str, auth: dict[str, str],
                                                   client: triton.InferenceServerClient) -> None:
    """InferTensorContents instead of raw bytes: the same answer, in the same form."""
    request = pb.ModelInferRequest(model_name="digits", id="typed-1")
    request.inputs.add(name="input", datatype="FP32", shape=list(ROWS.shape),
                       contents=pb.InferTensorContents(fp32_contents=ROWS.ravel().tolist()))
    with grpc.insecure_channel(grpc_url) as channel:
        call = channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        answer = call(request, metadata=tuple(auth.items()), timeout=20)
    assert answer.id == "typed-1" and not answer.raw_output_contents
    proba = {o.name: o for o in answer.outputs}["probabilities"]
    typed = np.asarray(proba.contents.fp32_contents).reshape(8, 10)
    np.testing.assert_allclose(typed, infer(client, "digits", auth).as_numpy("probabilities"))


def test_infer_without_a_key_is_unauthenticated_with_rests_message(
        gateway: Gateway, client: triton.InferenceServerClient) -> None:
    err = refusal(lambda: infer(client, "digits", None))
    assert err.status() == "StatusCode.UNAUTHENTICATED"
    assert err.message() == rest_error(gateway, "digits", {"inputs": []}, None)
    err = refusal(lambda: infer(client, "digits", {"authorization": "Bearer nope"}))
    assert err.status() == "StatusCode.UNAUTHENTICATED"


def test_bad_inputs_are_invalid_argument_with_rests_messages(
        gateway: Gateway, client: triton.InferenceServerClient, auth: dict[str, str],
        key: str) -> None:
    narrow = ROWS[:, :32]
    err = refusal(lambda: infer(client, "digits", auth, rows=narrow))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [8, 32],
                        "data": narrow.ravel().tolist()}]}
    assert err.message() == rest_error(gateway, "digits", body, key)
    assert "inputs[0].shape" in err.message()
    nan = ROWS.copy()
    nan[0, 0] = np.nan
    err = refusal(lambda: infer(client, "digits", auth, rows=nan))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.message().startswith("inputs[0].data: NaN or infinite values")


def test_versions_and_requested_outputs_as_on_rest(client: triton.InferenceServerClient,
                                                  auth: dict[str, str]) -> None:
    tensor = triton.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    label = [triton.InferRequestedOutput("label")]
    result = client.infer("digits", [tensor], model_version="1", outputs=label, headers=auth)
    assert [o.name for o in result.get_response().outputs] == ["label"]
    assert result.get_response().model_version == "1"
    err = refusal(lambda: client.infer("digits", [tensor], model_version="7", headers=auth))
    assert err.status() == "StatusCode.NOT_FOUND"
    assert err.message() == ("model 'digits' has no version '7'; the gateway serves its "
                             "version '1'")
    err = refusal(lambda: client.infer("digits", [tensor], headers=auth,
                                       outputs=[triton.InferRequestedOutput("nope")]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.message().startswith("body.outputs: model 'digits' has no output 'nope'")


def test_bodies_over_the_limits_are_resource_exhausted(
        client: triton.InferenceServerClient, auth: dict[str, str]) -> None:
    """Over a model's limit: the body guard's 413, with REST's message; over the server's
    max_body_bytes: grpc refuses the message itself."""
    err = refusal(lambda: infer(client, "digits-small", auth))  # 8 x 64 x 4 bytes and more
    assert err.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert err.message() == "request body over the 1024 byte limit"
    huge = np.zeros((1100, 64), dtype=np.float32)  # 281,600 bytes > 256 KiB
    err = refusal(lambda: infer(client, "digits", auth, rows=huge))
    assert err.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_unknown_model_is_not_found(client: triton.InferenceServerClient,
                                    auth: dict[str, str]) -> None:
    err = refusal(lambda: infer(client, "nope", auth))
    assert err.status() == "StatusCode.NOT_FOUND"
    assert err.message() == "unknown model 'nope'"


def test_a_grpc_infer_is_audited_like_a_rest_one(gateway: Gateway, auth: dict[str, str],
                                                 client: triton.InferenceServerClient) -> None:
    before = len(gateway.audit_records())
    infer(client, "digits", auth)
    refusal(lambda: infer(client, "digits", None))
    deadline = time.monotonic() + 10
    while len(gateway.audit_records()) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    allowed, denied = gateway.audit_records()[before:before + 2]
    assert (allowed["action"], allowed["model"], allowed["status"]) == ("infer", "digits", 200)
    assert allowed["principal"] == "alice" and allowed["source"] == "127.0.0.1"
    assert allowed["rows"] == 8 and allowed["bytes_in"] > 8 * 64 * 4
    assert (denied["status"], denied["reason"]) == (401, "missing_credentials")


# -- MLServer's gRPC server as the upstream --------------------------------------------------


def test_infer_through_the_gateway_to_mlservers_grpc_server(
        client: triton.InferenceServerClient, auth: dict[str, str],
        digits_files: dict[str, Path]) -> None:
    model = joblib.load(digits_files["joblib"])
    result = infer(client, "mls", auth)
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.predict_proba(ROWS),
                               atol=1e-5)
    assert result.as_numpy("label").tolist() == model.predict(ROWS).tolist()
    raw = infer(client, "mls-raw", auth)  # MLServer's own output, passed through
    assert raw.as_numpy("predict").ravel().tolist() == model.predict(ROWS).tolist()
    assert client.is_model_ready("mls", headers=auth)
    meta = client.get_model_metadata("mls", headers=auth, as_json=True)
    assert meta["inputs"][0]["name"] == "input"


def test_the_same_answer_as_mlservers_grpc_server_direct(
        client: triton.InferenceServerClient, auth: dict[str, str], mlserver: MLServer) -> None:
    direct = triton.InferenceServerClient(url=f"127.0.0.1:{mlserver.grpc_port}")
    try:
        tensor = triton.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)
        want = direct.infer("digits", [tensor]).as_numpy("predict")
    finally:
        direct.close()
    assert infer(client, "mls-raw", auth).as_numpy("predict").tolist() == want.tolist()


def test_an_unknown_upstream_model_is_mlservers_not_found_without_its_name(
        client: triton.InferenceServerClient, auth: dict[str, str]) -> None:
    err = refusal(lambda: infer(client, "ghost", auth))
    assert err.status() == "StatusCode.NOT_FOUND", err.message()
    assert "nope" not in err.message()
    assert not client.is_model_ready("ghost", headers=auth)


def test_a_hostile_request_cannot_poison_the_grpc_upstream_for_others(
        grpc_url: str, auth: dict[str, str], client: triton.InferenceServerClient) -> None:
    """An id with CRLF and non-Latin-1 text and a `content_type` parameter (what crashed
    MLServer's REST handler) go through the same canonical forwarding on a grpc:// upstream:
    the sender is answered with its own id, and each next caller is served."""
    hostile = pb.ModelInferRequest(model_name="mls", id="a\r\nb\u2603")
    tensor = hostile.inputs.add(name="input", datatype="FP32", shape=list(ROWS.shape))
    tensor.parameters["content_type"].string_param = "str"
    hostile.parameters["content_type"].string_param = "str"
    hostile.raw_input_contents.append(ROWS.tobytes())
    with grpc.insecure_channel(grpc_url) as channel:
        call = channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        for _ in range(3):
            answer = call(hostile, metadata=tuple(auth.items()), timeout=20)
            assert answer.id == "a\r\nb\u2603"
            assert infer(client, "mls", auth).as_numpy("label").shape == (8,)
