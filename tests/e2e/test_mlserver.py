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
from .mlserver_fixture import MLServer

pytestmark = pytest.mark.mlserver

INFER_PATH = "/v2/models/digits/infer"


@pytest.fixture(scope="module")
def mlserver(own_mlserver: MLServer) -> MLServer:
    """This module crashes MLServer's handler on purpose: a server of its own, so the
    shared one (tests/e2e/conftest.py) never sees those crashes."""
    return own_mlserver


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
def gateway(tmp_path_factory: pytest.TempPathFactory, mlserver: MLServer) -> Iterator[Gateway]:
    models = [
        upstream_model("digits", mlserver.url),
        upstream_model("ghost", mlserver.url, upstream="nope"),
        # the gateway lets 32 features through, the model behind wants 64: MLServer crashes
        upstream_model("digits-32", mlserver.url, upstream="digits", features=32),
        # any width passes the gateway: 64 features are answered, others crash MLServer
        upstream_model("digits-any", mlserver.url, upstream="digits", features=-1),
        # MLServer's own outputs (predict), passed through as they come
        {**upstream_model("digits-raw", mlserver.url, upstream="digits"),
         "backend": {"type": "oip", "url": mlserver.url, "upstream_model": "digits",
                     "timeout_s": 10}},
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
    assert doc["error"].startswith("the upstream model server refused the request (status 404)")
    assert "Model ghost not found" in doc["error"]  # upstream's name replaced by the public one


async def test_mlserver_traceback_is_502_without_the_traceback(
        gateway: Gateway, key: str, mlserver: MLServer) -> None:
    body = infer_body([row[:32] for row in digits_rows(2)])
    body["outputs"] = [{"name": "predict_proba"}]
    # the premise: MLServer itself answers this with a raw traceback
    status, _, raw = await post(f"{mlserver.url}{INFER_PATH}", body)
    assert status == 500 and "Traceback" in raw

    # the gateway's model answers `probabilities` and `label`, which it asks MLServer for
    del body["outputs"]
    status, doc, text = await post(f"{gateway.url}/v2/models/digits-32/infer", body, key)
    assert status == 502
    assert set(doc) == {"error"}
    for leak in ("Traceback", "File \"", "sklearn", "site-packages", "32 features"):
        assert leak not in text, f"{leak!r} leaked to the client: {text}"


async def test_readiness_checks_each_model_on_mlserver(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{gateway.admin_url}/admin/ready") as r:
        assert r.status == 200  # the other models serve (readiness.models: any)
        doc = await r.json()
    assert doc["not_ready"] == ["model ghost"]  # MLServer has no model "nope"


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


@pytest.mark.parametrize("model", ["digits", "digits-raw"])
async def test_values_and_parameters_no_model_can_take_get_400_before_mlserver(
        gateway: Gateway, key: str, mlserver: MLServer, model: str) -> None:
    """The same 400s as for local models: MLServer answered 3e38 with 200 where scikit-learn
    in-process raised, and parameters 250 levels deep failed re-encoding (500)."""
    huge = infer_body(digits_rows(1))
    huge["inputs"][0]["data"][7] = 3e38
    deep: dict[str, Any] = {}
    for _ in range(250):
        deep = {"p": deep}
    nested = {**infer_body(digits_rows(1)), "parameters": deep}
    url = f"{gateway.url}/v2/models/{model}/infer"
    status, doc, _ = await post(url, huge, key)
    assert (status, doc["error"]) == (400, "inputs[0].data: value 3e+38 at row 0, column 7 is "
                                      "over the magnitude limit of 1e+30 (limits.max_abs_value)")
    status, doc, _ = await post(url, nested, key)
    assert (status, doc["error"]) == (400, "body.parameters: nested deeper than 8 levels")


#: What caller A sends: each crashed MLServer 1.7.1 when forwarded as sent, or was refused.
HOSTILE: list[tuple[str, dict[str, Any]]] = [
    ("crlf id", {"id": "a\r\nX-Injected: 1"}),
    ("non-latin-1 id", {"id": "\u2603 snow \u20ac"}),
    ("content_type str", {"input_parameters": {"content_type": "str"}}),
    ("content_type pd", {"parameters": {"content_type": "pd"}}),
    ("headers", {"parameters": {"headers": {"X-Evil": "a\r\nb"}}}),
    ("output content_type", {"outputs": [{"name": "predict",
                                          "parameters": {"content_type": "str"}}]}),
]


def hostile_body(spec: dict[str, Any]) -> dict[str, Any]:
    body = infer_body(digits_rows(1))
    for field, value in spec.items():
        if field == "input_parameters":
            body["inputs"][0]["parameters"] = value
        else:
            body[field] = value
    return body


@pytest.mark.parametrize("model", ["digits", "digits-raw"])
async def test_one_callers_hostile_ids_and_parameters_never_fail_another_caller(
        gateway: Gateway, key: str, mlserver: MLServer, model: str) -> None:
    """Before: MLServer crashed on these and closed the connection, which the gateway then
    handed to the next caller: B's valid request got 502 in about half of the trials."""
    url = f"{gateway.url}/v2/models/{model}/infer"
    b_key = gateway.key(principal="bob")
    valid = infer_body(digits_rows(1))
    answers_a: list[tuple[str, int, dict[str, Any]]] = []
    failed_b = []
    for trial in range(30):
        name, spec = HOSTILE[trial % len(HOSTILE)]
        body = hostile_body(spec)
        if "outputs" in body and model == "digits":  # ask for an output the model has
            body["outputs"] = [{**body["outputs"][0], "name": "label"}]
        status_a, doc_a, _ = await post(url, body, key)
        answers_a.append((name, status_a, doc_a))
        status_b, _, text_b = await post(url, valid, b_key)
        if status_b != 200:
            failed_b.append((trial, name, status_b, text_b[:200]))
    assert failed_b == [], f"caller B failed after caller A's input: {failed_b}"
    for name, status, doc in answers_a:
        assert status == 200, (name, status, doc)  # the hostile parts are simply not sent
        if "id" in dict(HOSTILE)[name]:
            assert doc["id"] == dict(HOSTILE)[name]["id"]  # the client's id comes back as sent
    log = gateway.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log


async def test_an_oversized_id_is_refused_and_never_reaches_mlserver(
        gateway: Gateway, key: str) -> None:
    status, doc, _ = await post(f"{gateway.url}/v2/models/digits/infer",
                                {**infer_body(digits_rows(1)), "id": "x" * 10_240}, key)
    assert (status, doc["error"]) == (400, "body.id: over the limit of 256 characters")



async def test_a_crash_of_mlserver_never_fails_the_next_callers_request(
        gateway: Gateway, key: str) -> None:
    """After a 500 MLServer's server closes the connection without saying so; the gateway
    pooled it and wrote the next request into it (502 for an innocent caller)."""
    url = f"{gateway.url}/v2/models/digits-any/infer"
    crash = infer_body([row[:32] for row in digits_rows(1)])
    valid = infer_body(digits_rows(1))
    failed = []
    for trial in range(30):
        assert (await post(url, crash, key))[0] == 502
        status, _, text = await post(url, valid, key)
        if status != 200:
            failed.append((trial, status, text[:200]))
    assert failed == []
