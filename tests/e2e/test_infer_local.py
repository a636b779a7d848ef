"""Valid inference through a real gateway process on loopback, for each local format."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from ..support import Gateway, digits_rows, infer_body


def local_model(files: dict[str, Path]) -> Any:
    import skops.io as sio

    return sio.load(files["skops"], trusted=[])


@pytest.mark.parametrize("model", ["digits", "digits-onnx"])
async def test_valid_infer_returns_probabilities_and_label(
        local_gateway: Gateway, digits_files: dict[str, Path], model: str) -> None:
    key = local_gateway.key()
    rows = digits_rows(3)
    async with aiohttp.ClientSession() as s, s.post(
            f"{local_gateway.url}/v2/models/{model}/infer", json=infer_body(rows),
            headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    assert doc["model_name"] == model
    outputs = {o["name"]: o for o in doc["outputs"]}
    proba = np.asarray(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert proba.shape == (3, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    assert outputs["label"]["data"] == list(np.argmax(proba, axis=1))
    expected = local_model(digits_files).predict_proba(np.asarray(rows))
    np.testing.assert_allclose(proba, expected, atol=1e-4)


async def test_metadata_describes_inputs_and_outputs(local_gateway: Gateway) -> None:
    key = local_gateway.key()
    async with aiohttp.ClientSession() as s, s.get(
            f"{local_gateway.url}/v2/models/digits",
            headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in doc["outputs"]] == ["probabilities", "label"]


async def test_two_hundred_concurrent_requests_all_answered_correctly(
        local_gateway: Gateway, digits_files: dict[str, Path]) -> None:
    # four callers of 50 each: one principal may hold only server.max_inflight_per_principal
    # (64) requests at once, which tests/e2e/test_hardening_serving.py covers
    keys = [local_gateway.key(principal=f"crowd-{n}") for n in range(4)]
    rows = digits_rows(10)
    expected = local_model(digits_files).predict(np.asarray(rows)).tolist()

    async def one(s: aiohttp.ClientSession, i: int) -> int:
        headers = {"Authorization": f"Bearer {keys[i % 4]}"}
        async with s.post(f"{local_gateway.url}/v2/models/digits/infer",
                          json=infer_body([rows[i % 10]]), headers=headers) as r:
            assert r.status == 200
            doc = await r.json()
        return int(next(o for o in doc["outputs"] if o["name"] == "label")["data"][0])

    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as s:
        labels = await asyncio.gather(*(one(s, i) for i in range(200)))
    assert labels == [expected[i % 10] for i in range(200)]


async def test_health_endpoints(local_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{local_gateway.url}/v2/health/live") as r:
            assert r.status == 200
        async with s.get(f"{local_gateway.url}/v2/health/ready") as r:
            assert r.status == 200
            assert (await r.json()) == {"ready": True}
