"""`audit.record_inputs` through a real gateway: a binary tensor request, a gzip request and
a gRPC request (tritonclient's defaults for each) leave the same inputs in the audit record
as the plain JSON request does; a body refused before it decoded leaves none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th

from ..support import Gateway, digits_rows, free_port

MODEL = "digits"
ROWS = np.asarray(digits_rows(3), dtype=np.float32)
JSON_REQUEST = {"inputs": [{"name": "input", "shape": list(ROWS.shape), "datatype": "FP32",
                            "data": ROWS.ravel().tolist()}]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
            ) -> Iterator[Gateway]:
    skops = {"type": "skops", "path": str(digits_files["skops"])}
    gw = Gateway(tmp_path_factory.mktemp("gw-audit-inputs"), [{"name": MODEL, "backend": skops}])
    gw.extra = {
        "server": {"host": "127.0.0.1", "port": gw.port, "max_body_bytes": 256 * 1024,
                   "admin_listen": f"127.0.0.1:{gw.admin_port}", "grpc_port": free_port()},
        "audit": {"sink": "jsonl:///audit.jsonl", "record_inputs": True},
    }
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def auth(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.key()}"}


@pytest.fixture(scope="module")
def json_inputs(gateway: Gateway, auth: dict[str, str]) -> Any:
    """The inputs recorded for the plain JSON request: what every other encoding must match."""
    record = recorded(gateway, lambda: httpx.post(
        f"{gateway.url}/v2/models/{MODEL}/infer", json=JSON_REQUEST, headers=auth))
    assert record["status"] == 200 and record["inputs"] == JSON_REQUEST
    return record["inputs"]


def recorded(gateway: Gateway, send: Any) -> dict[str, Any]:
    """The audit record of the one call `send` makes."""
    before = len(gateway.audit_records())
    send()
    deadline = time.monotonic() + 10
    while len(gateway.audit_records()) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    records = gateway.audit_records()[before:]
    assert len(records) == 1, records
    return records[0]


def http_input() -> th.InferInput:
    tensor = th.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=True)
    return tensor


def http_infer(gateway: Gateway, auth: dict[str, str], **options: Any) -> None:
    client = th.InferenceServerClient(gateway.url.removeprefix("http://"))
    try:
        # a copy: tritonclient adds its own headers (Content-Encoding, ...) to the dict given
        client.infer(MODEL, [http_input()], headers=dict(auth), **options)
    finally:
        client.close()


def test_a_binary_tensor_request_records_the_json_requests_inputs(
        gateway: Gateway, auth: dict[str, str], json_inputs: Any) -> None:
    record = recorded(gateway, lambda: http_infer(gateway, auth))
    assert record["status"] == 200 and record["inputs"] == json_inputs


def test_a_gzip_request_records_the_json_requests_inputs(
        gateway: Gateway, auth: dict[str, str], json_inputs: Any) -> None:
    record = recorded(gateway, lambda: http_infer(
        gateway, auth, request_compression_algorithm="gzip"))
    assert record["status"] == 200 and record["inputs"] == json_inputs


def test_a_grpc_request_records_the_json_requests_inputs(
        gateway: Gateway, auth: dict[str, str], json_inputs: Any) -> None:
    def send() -> None:
        client = tg.InferenceServerClient(f"127.0.0.1:{gateway.extra['server']['grpc_port']}")
        try:
            tensor = tg.InferInput("input", list(ROWS.shape), "FP32")
            tensor.set_data_from_numpy(ROWS)
            client.infer(MODEL, [tensor], headers={"authorization": auth["Authorization"]},
                         client_timeout=20)
        finally:
            client.close()

    record = recorded(gateway, send)
    assert record["status"] == 200 and record["inputs"] == json_inputs


def test_a_body_refused_before_it_decoded_records_no_inputs(
        gateway: Gateway, auth: dict[str, str]) -> None:
    header = b'{"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", ' \
             b'"parameters": {"binary_data_size": 768}}]}'
    body = header + b"\xff\xfe" * 10  # far fewer raw bytes than the header declares
    record = recorded(gateway, lambda: httpx.post(
        f"{gateway.url}/v2/models/{MODEL}/infer", content=body,
        headers={**auth, "Inference-Header-Content-Length": str(len(header))}))
    assert record["status"] == 400 and record["inputs"] is None
    assert record["bytes_in"] == len(body)
