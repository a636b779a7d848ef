"""Malformed, oversized and hostile input through real HTTP: a clear error, nothing lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from modelfence.backends.base import NOT_COMPUTABLE

from ..support import Gateway, digits_rows, infer_body


async def post(gw: Gateway, key: str | None, body: bytes, *, model: str = "digits",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v2/models/{model}/infer", data=body, headers=h) as r:
        text = await r.text()
        return r.status, json.loads(text)


def body_of(doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def key(local_gateway: Gateway) -> str:
    return local_gateway.key()


ROW = digits_rows(1)[0]


@pytest.mark.parametrize(("doc", "field"), [
    ({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": ROW[:63]}]},
     "inputs[0].shape"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW[:60]}]},
     "inputs[0].data"),
    ({"inputs": [{"name": "input", "shape": [64], "datatype": "FP32", "data": ROW}]},
     "inputs[0].shape"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT32",
                  "data": [int(v) for v in ROW]}]}, "inputs[0].datatype"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FLOAT",
                  "data": ROW}]}, "inputs[0].datatype"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                  "data": ["x"] * 64}]}, "inputs[0].data"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                  "data": [True] * 64}]}, "inputs[0].data"),
    ({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ROW}]},
     "inputs[0].name"),
    ({"inputs": [{"shape": [1, 64], "datatype": "FP32", "data": ROW}]}, "inputs[0].name"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "data": ROW}]}, "inputs[0].shape"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "data": ROW}]}, "inputs[0].datatype"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]}, "inputs[0].data"),
    ({"inputs": []}, "body.inputs"),
    ({"inputs": "input"}, "body.inputs"),
    ({}, "body.inputs"),
    ([1, 2, 3], "request body"),
    ({"inputs": [{"name": "input", "shape": [65, 64], "datatype": "FP32", "data": ROW * 65}]},
     "inputs[0].shape"),  # over max_batch 64
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                  "data": [[1.0, 2.0], [3.0]]}]}, "inputs[0].data"),
    ({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP16",
                  "data": [1e6] * 64}]}, "inputs[0].data"),  # overflows FP16
])
async def test_invalid_inputs_get_400_naming_the_field(local_gateway: Gateway, key: str,
                                                       doc: object, field: str) -> None:
    status, answer = await post(local_gateway, key, body_of(doc))
    assert status == 400, answer
    assert str(answer["error"]).startswith(field), answer


@pytest.mark.parametrize("raw", [
    b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [NaN'
    + b", 0.0" * 63 + b"]}]}",
    b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [Infinity'
    + b", 0.0" * 63 + b"]}]}",
    b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1e999'
    + b", 0.0" * 63 + b"]}]}",
])
async def test_nan_and_infinity_are_refused(local_gateway: Gateway, key: str, raw: bytes) -> None:
    status, answer = await post(local_gateway, key, raw)
    assert status == 400
    assert "NaN" in str(answer["error"])


async def test_fp32_overflow_is_refused_as_non_finite(local_gateway: Gateway, key: str) -> None:
    doc = infer_body([[1e300, *ROW[1:]]])
    status, answer = await post(local_gateway, key, body_of(doc))
    assert status == 400
    assert str(answer["error"]).startswith("inputs[0].data: NaN or infinite")


@pytest.mark.parametrize("raw", [b"not json", b"{", b"\xff\xfe", b'{"inputs": [1, 2'])
async def test_non_json_gets_400(local_gateway: Gateway, key: str, raw: bytes) -> None:
    status, answer = await post(local_gateway, key, raw)
    assert status == 400
    assert "not valid JSON" in str(answer["error"])


async def test_empty_body_gets_400(local_gateway: Gateway, key: str) -> None:
    status, answer = await post(local_gateway, key, b"")
    assert status == 400
    assert "empty" in str(answer["error"])


async def test_body_over_limit_declared_gets_413_without_upload(local_gateway: Gateway,
                                                                key: str) -> None:
    # 256 KiB limit in the test config; claim 50 MB and send only a little of it.
    reader, writer = await asyncio.open_connection("127.0.0.1", local_gateway.port)
    writer.write(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {key}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{\"inputs\":")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), timeout=5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b"limit" in head


async def test_body_over_limit_chunked_gets_413(local_gateway: Gateway, key: str) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(2000):  # up to 64 MB if the gateway kept reading
            sent += 32 * 1024
            yield b" " * (32 * 1024)

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession() as s, s.post(
                f"{local_gateway.url}/v2/models/digits/infer", data=chunks(),
                headers=headers) as r:
            assert r.status == 413
            assert "limit" in (await r.json())["error"]
    except aiohttp.ClientError:
        pass  # the gateway may close the connection after answering; the bound below matters
    assert sent < 8 * 1024 * 1024, f"gateway kept reading {sent} bytes past a 256 KiB limit"


async def test_unknown_model_gets_404(local_gateway: Gateway) -> None:
    key = local_gateway.key(models=["*"])
    status, answer = await post(local_gateway, key, body_of(infer_body([ROW])), model="nope")
    assert status == 404
    assert "unknown model" in str(answer["error"])


async def test_model_not_granted_gets_403(local_gateway: Gateway) -> None:
    key = local_gateway.key(models=["digits-onnx"])
    status, answer = await post(local_gateway, key, body_of(infer_body([ROW])))
    assert status == 403
    assert answer["error"] == "access denied: no policy permits infer on model 'digits'"


async def test_unknown_route_and_method(local_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{local_gateway.url}/v3/nothing") as r:
            assert r.status == 404
            assert await r.json() == {"error": "not found"}
        async with s.get(f"{local_gateway.url}/v2/models/digits/infer") as r:
            assert r.status == 405
            assert await r.json() == {"error": "method not allowed"}


async def test_requests_after_bad_ones_still_work(local_gateway: Gateway, key: str) -> None:
    for raw in (b"junk", b"{}", b'{"inputs":[{"name":"input"}]}'):
        assert (await post(local_gateway, key, raw))[0] == 400
    status, _ = await post(local_gateway, key, body_of(infer_body([ROW])))
    assert status == 200


@pytest.mark.parametrize("model", ["digits", "digits-onnx"])
@pytest.mark.parametrize(("value", "cells"), [(3e38, [5]), (-3e38, list(range(64))),
                                              (1e31, [63])])
async def test_values_too_large_to_compute_with_get_400_on_every_backend(
        local_gateway: Gateway, key: str, model: str, value: float, cells: list[int]) -> None:
    """3e38 fits FP32, yet scikit-learn raised on it (500) and ONNX answered NaN."""
    row = list(ROW)
    for i in cells:
        row[i] = value
    status, answer = await post(local_gateway, key, body_of(infer_body([ROW, row])),
                                model=model)
    assert status == 400, answer
    assert answer["error"] == (f"inputs[0].data: value {value:.3g} at row 1, column {cells[0]} "
                               "is over the magnitude limit of 1e+30 (limits.max_abs_value)")


@pytest.mark.parametrize("where", ["body", "input", "output"])
async def test_deeply_nested_parameters_get_400(local_gateway: Gateway, key: str,
                                                where: str) -> None:
    deep: dict[str, object] = {}
    for _ in range(250):
        deep = {"p": deep}
    doc = infer_body([ROW])
    if where == "body":
        doc["parameters"] = deep
    elif where == "input":
        doc["inputs"][0]["parameters"] = deep
    else:
        doc["outputs"] = [{"name": "probabilities", "parameters": deep}]
    status, answer = await post(local_gateway, key, body_of(doc))
    field = {"body": "body.parameters", "input": "inputs[0].parameters",
             "output": "body.outputs[0]"}[where]
    assert status == 400, answer
    assert answer["error"] == f"{field}: nested deeper than 8 levels"


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
              ) -> Iterator[tuple[Gateway, str]]:
    """The magnitude limit off: what the models themselves make of 3e38."""
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("unlimited")
    x, y = load_digits(return_X_y=True)
    scaled = make_pipeline(StandardScaler(), MLPClassifier(  # as the demo model
        hidden_layer_sizes=(16,), solver="lbfgs", max_iter=50, random_state=0)).fit(x / 16, y)
    sio.dump(scaled, folder / "scaled.skops")
    off = {"max_abs_value": None}
    gw = Gateway(folder, [
        {"name": "scaled", "backend": {"type": "skops", "path": str(folder / "scaled.skops")},
         "limits": off},
        {"name": "onnx", "backend": {"type": "onnx", "path": str(digits_files["onnx"])},
         "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]}, "limits": off},
    ]).start()
    yield gw, gw.key()
    gw.stop()


@pytest.mark.parametrize("model", ["scaled", "onnx"])
async def test_a_model_that_cannot_compute_with_the_values_gets_400_not_500(
        unlimited: tuple[Gateway, str], model: str) -> None:
    """scikit-learn raised ValueError after its scaler overflowed (500), ONNX answered NaN."""
    gw, key = unlimited
    status, answer = await post(gw, key, body_of(infer_body([[3e38] * 64])), model=model)
    assert (status, answer["error"]) == (400, NOT_COMPUTABLE)
    assert (await post(gw, key, body_of(infer_body([ROW])), model=model))[0] == 200
    log = gw.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log and "Warning" not in log
