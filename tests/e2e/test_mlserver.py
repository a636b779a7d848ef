"""The gateway in front of a real MLServer serving a scikit-learn digits model.

MLServer runs from its own virtualenv (tests/e2e/mlserver_fixture.py); these tests skip
without it and fail without it under CI=true. One MLServer and one gateway serve the
whole module.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import joblib
import numpy as np
import pytest

from ..support import Gateway, digits_rows, infer_body
from .mlserver_fixture import MLServer, running_mlserver

pytestmark = pytest.mark.mlserver

INFER_PATH = "/v2/models/digits/infer"


def upstream_model(name: str, url: str, *, upstream: str | None = None,
                   features: int | None = 64) -> dict[str, Any]:
    backend: dict[str, Any] = {"type": "oip", "url": url, "timeout_s": 10,
                               "probabilities_output": "predict_proba"}
    if upstream:
        backend["upstream_model"] = upstream
    model: dict[str, Any] = {"name": name, "backend": backend}
    if features is not None:
        model["input"] = {"name": "input", "datatype": "FP32", "shape": [-1, features]}
    return model


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
             ) -> Iterator[MLServer]:
    with running_mlserver(tmp_path_factory.mktemp("mlserver"),
                          {"digits": digits_files["joblib"]}) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mlserver: MLServer) -> Iterator[Gateway]:
    models = [
        upstream_model("digits", mlserver.url),
        upstream_model("ghost", mlserver.url, upstream="nope"),
        # the gateway lets 32 features through, the model behind wants 64: MLServer crashes
        upstream_model("digits-32", mlserver.url, upstream="digits", features=32),
    ]
    gw = Gateway(tmp_path_factory.mktemp("gw-mlserver"), models).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.key()


async def post(url: str, body: dict[str, Any], key: str | None = None
               ) -> tuple[int, dict[str, Any], str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        text = await r.text()
        try:
            doc = await r.json(content_type=None)
        except ValueError:
            doc = {}
        return r.status, doc, text


async def test_probabilities_equal_the_models_own_predict_proba(
        gateway: Gateway, key: str, digits_files: dict[str, Path]) -> None:
    rows = digits_rows(40)[::8]  # five different digits
    status, doc, text = await post(f"{gateway.url}/v2/models/digits/infer", infer_body(rows), key)
    assert status == 200, text
    assert doc["model_name"] == "digits"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["probabilities"]["shape"] == [5, 10]
    proba = np.asarray(outputs["probabilities"]["data"]).reshape(5, 10)
    model = joblib.load(digits_files["joblib"])
    x = np.asarray(rows)
    np.testing.assert_allclose(proba, model.predict_proba(x), atol=1e-5)
    assert outputs["label"]["data"] == model.predict(x).tolist()


async def test_bad_shape_is_refused_by_the_gateway_before_reaching_mlserver(
        gateway: Gateway, key: str, mlserver: MLServer) -> None:
    url = f"{gateway.url}/v2/models/digits/infer"
    before = mlserver.requests_logged("POST", INFER_PATH)
    status, doc, _ = await post(url, infer_body([row[:32] for row in digits_rows(2)]), key)
    assert status == 400
    assert doc["error"].startswith("inputs[0].shape: model expects [-1, 64]")
    # a valid request afterwards reaches MLServer; once it is logged, the bad one would be too
    assert (await post(url, infer_body(digits_rows(1)), key))[0] == 200
    deadline = time.monotonic() + 5.0
    while mlserver.requests_logged("POST", INFER_PATH) <= before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert mlserver.requests_logged("POST", INFER_PATH) == before + 1


async def test_unknown_upstream_model_gives_mlservers_404(gateway: Gateway, key: str) -> None:
    status, doc, text = await post(f"{gateway.url}/v2/models/ghost/infer",
                                   infer_body(digits_rows(1)), key)
    assert status == 404, text
    assert set(doc) == {"error"}
    assert doc["error"].startswith("upstream model server refused the request")
    assert "Model ghost not found" in doc["error"]  # upstream's name replaced by the public one


async def test_mlserver_traceback_is_502_without_the_traceback(
        gateway: Gateway, key: str, mlserver: MLServer) -> None:
    body = infer_body([row[:32] for row in digits_rows(2)])
    body["outputs"] = [{"name": "predict_proba"}]
    # the premise: MLServer itself answers this with a raw traceback
    status, _, raw = await post(f"{mlserver.url}{INFER_PATH}", body)
    assert status == 500 and "Traceback" in raw

    status, doc, text = await post(f"{gateway.url}/v2/models/digits-32/infer", body, key)
    assert status == 502
    assert set(doc) == {"error"}
    for leak in ("Traceback", "File \"", "sklearn", "site-packages", "32 features"):
        assert leak not in text, f"{leak!r} leaked to the client: {text}"


async def test_readiness_checks_each_model_on_mlserver(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{gateway.url}/v2/health/ready") as r:
        assert r.status == 503  # MLServer has no model "nope"
        doc = await r.json()
    assert doc["error"] == "not ready: model ghost"


def test_gateway_refuses_to_start_on_mlservers_empty_input_metadata(
        tmp_path: Path, mlserver: MLServer) -> None:
    gw = Gateway(tmp_path, [upstream_model("digits", mlserver.url, features=None)])
    gw.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "modelfence", "serve", "--config", str(gw.config)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "publishes no input metadata" in result.stderr
    assert "declare `input:`" in result.stderr
    assert "Traceback" not in result.stderr
