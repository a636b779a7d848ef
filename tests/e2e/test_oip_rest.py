"""The whole OIP REST protocol through the gateway, driven by tritonclient (2.73, default
settings): server metadata and readiness, model metadata and readiness, infer, each with and
without /versions/{v}/, to a local model and to a real MLServer; requested outputs; the
per-model and bounded readiness with one upstream stalled.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelfence.gateway.oip_routes import OIP_EXTENSIONS

from ..support import Gateway, digits_rows, infer_body
from .mlserver_fixture import MLServer

pytestmark = pytest.mark.mlserver

ROWS = np.asarray(digits_rows(8), dtype=np.float32)
BINARY = "binary_tensor_data"


@pytest.fixture(scope="module")
def stalled() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung upstream)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path],
            mlserver: MLServer, stalled: int) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gw-oip-rest")
    (folder / "wm.secret").write_text("w" * 48)
    (folder / "evidence.key").write_text("ab" * 32)
    skops = {"type": "skops", "path": str(digits_files["skops"])}
    digits_input = {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    upstream = {"type": "oip", "url": mlserver.url, "upstream_model": "digits", "timeout_s": 10}
    models = [
        {"name": "digits", "backend": skops, "limits": {"max_batch": 64}},
        {"name": "digits-v7", "backend": skops, "version": "7"},
        {"name": "digits-marked", "backend": skops, "limits": {"max_batch": 64}},
        {"name": "mls", "backend": {**upstream, "probabilities_output": "predict_proba"},
         "input": digits_input},
        {"name": "mls-raw", "backend": upstream, "input": digits_input},
        {"name": "stalled", "backend": {"type": "oip", "url": f"http://127.0.0.1:{stalled}",
                                        "timeout_s": 30},
         "input": digits_input},
    ]
    gw = Gateway(folder, models, extra={"watermark": {
        "models": ["digits-marked"], "fraction": 0.3, "control_ratio": 2, "fraction_at_risk": None,
        "repeats": "consistent", "keys": [{"id": "k1", "secret_file": "wm.secret"}],
        "evidence_store": "sqlite:///evidence.db", "evidence_key_file": "evidence.key"}})
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.key()


@pytest.fixture(scope="module")
def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def client(gateway: Gateway) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=gateway.url.removeprefix("http://"),
                                     network_timeout=10.0)
    try:
        yield c
    finally:
        c.close()


def json_infer(client: triton.InferenceServerClient, model: str, auth: dict[str, str],
               outputs: list[str] | None = None, version: str = "",
               rows: np.ndarray[Any, Any] = ROWS) -> triton.InferResult:
    """tritonclient's infer with every tensor as JSON (no binary extension)."""
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    asked = [triton.InferRequestedOutput(o, binary_data=False) for o in outputs or []]
    return client.infer(model, [tensor], model_version=version, outputs=asked or None,
                        headers=auth)


def names(result: triton.InferResult) -> list[str]:
    return [o["name"] for o in result.get_response()["outputs"]]


# -- server metadata and health -------------------------------------------------------------


def test_server_metadata_liveness_and_readiness(client: triton.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "modelfence" and meta["version"]
    assert meta["extensions"] == list(OIP_EXTENSIONS)
    assert client.is_server_live()
    # one upstream hangs and the others serve: ready (readiness.models: any, the default)
    assert client.is_server_ready()


def test_server_readiness_answers_at_once_while_an_upstream_hangs(
        gateway: Gateway, client: triton.InferenceServerClient) -> None:
    """Generous bounds (this machine is shared); the < 100 ms figure is bench/'s."""
    took = []
    for _ in range(10):
        started = time.perf_counter()
        assert client.is_server_ready()
        took.append(time.perf_counter() - started)
    assert max(took) < 1.0, took
    # the stalled upstream is named to operators, not to the public
    details = httpx.get(f"{gateway.admin_url}/admin/ready", timeout=5).json()
    assert details["ready"] is True
    assert details["not_ready"] == ["model stalled"]


# -- model readiness and metadata -----------------------------------------------------------


def test_model_readiness_per_model(client: triton.InferenceServerClient,
                                   auth: dict[str, str]) -> None:
    for model in ("digits", "mls", "mls-raw"):
        assert client.is_model_ready(model, headers=auth), model
    assert client.is_model_ready("digits", "1", headers=auth)
    assert client.is_model_ready("digits-v7", "7", headers=auth)
    assert not client.is_model_ready("digits", "2", headers=auth)
    started = time.perf_counter()
    assert not client.is_model_ready("stalled", headers=auth)
    assert time.perf_counter() - started < 1.0


def test_model_ready_answers(gateway: Gateway, auth: dict[str, str]) -> None:
    r = httpx.get(f"{gateway.url}/v2/models/digits/ready", headers=auth)
    assert (r.status_code, r.json()) == (200, {"name": "digits", "ready": True})
    r = httpx.get(f"{gateway.url}/v2/models/stalled/ready", headers=auth)
    assert (r.status_code, r.json()) == (503, {"error": "model 'stalled' is not ready"})


def test_model_metadata_names_the_version_served(client: triton.InferenceServerClient,
                                                 auth: dict[str, str]) -> None:
    meta = client.get_model_metadata("digits", headers=auth)
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    assert client.get_model_metadata("digits", "1", headers=auth) == meta
    assert client.get_model_metadata("digits-v7", "7", headers=auth)["versions"] == ["7"]
    upstream = client.get_model_metadata("mls", headers=auth)
    assert upstream["inputs"][0]["shape"] == [-1, 64]


def test_another_version_is_404_naming_the_served_one(gateway: Gateway,
                                                      auth: dict[str, str]) -> None:
    said = "model 'digits-v7' has no version '1'; the gateway serves its version '7'"
    for method, path in (("GET", ""), ("GET", "/ready"), ("POST", "/infer")):
        r = httpx.request(method, f"{gateway.url}/v2/models/digits-v7/versions/1{path}",
                          headers=auth, json=infer_body(digits_rows(1)))
        assert (r.status_code, r.json()) == (404, {"error": said}), path
    with pytest.raises(InferenceServerException, match="no version '1'"):
        triton.InferenceServerClient(gateway.url.removeprefix("http://")).get_model_metadata(
            "digits-v7", "1", headers=auth)


def test_an_anonymous_caller_learns_nothing_about_models(gateway: Gateway) -> None:
    """401 before any 404: which models or versions exist is told only to a known caller."""
    for path in ("/v2/models/digits", "/v2/models/nope", "/v2/models/digits/ready",
                 "/v2/models/nope/ready", "/v2/models/digits/versions/1/ready",
                 "/v2/models/digits/versions/9", "/v2/models/nope/versions/1/ready"):
        r = httpx.get(f"{gateway.url}{path}")
        assert r.status_code == 401, path
        assert "digits" not in r.text and "nope" not in r.text
    r = httpx.post(f"{gateway.url}/v2/models/nope/versions/3/infer",
                   json=infer_body(digits_rows(1)))
    assert r.status_code == 401


def test_model_readiness_goes_through_policy(gateway: Gateway, auth: dict[str, str]) -> None:
    only_mls = {"Authorization": "Bearer " + gateway.key(models=["mls"], principal="bob")}
    assert httpx.get(f"{gateway.url}/v2/models/mls/ready", headers=only_mls).status_code == 200
    for path in ("/v2/models/digits/ready", "/v2/models/digits"):
        assert httpx.get(f"{gateway.url}{path}", headers=only_mls).status_code == 403, path
    r = httpx.get(f"{gateway.url}/v2/models/nope/ready", headers=auth)
    assert r.status_code == 404 and r.json()["error"] == "unknown model 'nope'"


# -- infer and requested outputs ------------------------------------------------------------


@pytest.mark.parametrize("model", ["digits", "mls"])
def test_infer_json_with_and_without_version(client: triton.InferenceServerClient,
                                             auth: dict[str, str], model: str) -> None:
    plain = json_infer(client, model, auth)
    assert names(plain) == ["probabilities", "label"]
    proba = plain.as_numpy("probabilities")
    assert proba is not None and proba.shape == (8, 10)
    label = plain.as_numpy("label")
    assert label is not None and list(label) == list(proba.argmax(axis=1))
    versioned = json_infer(client, model, auth, version="1")
    assert np.array_equal(versioned.as_numpy("label"), label)


@pytest.mark.parametrize("model", ["digits", "mls"])
def test_requested_outputs_are_the_ones_answered(client: triton.InferenceServerClient,
                                                 auth: dict[str, str], model: str) -> None:
    both = json_infer(client, model, auth)
    only_label = json_infer(client, model, auth, ["label"])
    assert names(only_label) == ["label"]
    assert np.array_equal(only_label.as_numpy("label"), both.as_numpy("label"))
    assert names(json_infer(client, model, auth, ["probabilities"])) == ["probabilities"]
    assert names(json_infer(client, model, auth, ["label", "probabilities"])) == [
        "label", "probabilities"]


@pytest.mark.parametrize("model", ["digits", "mls"])
def test_an_unknown_output_is_a_400_naming_it(gateway: Gateway, auth: dict[str, str],
                                              model: str) -> None:
    body = {**infer_body(digits_rows(1)), "outputs": [{"name": "label"}, {"name": "logits"}]}
    r = httpx.post(f"{gateway.url}/v2/models/{model}/infer", json=body, headers=auth)
    assert r.status_code == 400
    assert r.json() == {"error": f"body.outputs: model {model!r} has no output 'logits' "
                                 "(its outputs: 'probabilities', 'label')"}


def test_a_pass_through_upstream_answers_the_outputs_asked(
        client: triton.InferenceServerClient, gateway: Gateway, auth: dict[str, str]) -> None:
    """mls-raw declares no outputs: MLServer's own (`predict`) pass as they come."""
    answer = json_infer(client, "mls-raw", auth, ["predict"])
    assert names(answer) == ["predict"]
    body = {**infer_body(digits_rows(1)), "outputs": [{"name": "logits"}]}
    r = httpx.post(f"{gateway.url}/v2/models/mls-raw/infer", json=body, headers=auth)
    assert r.status_code == 400, r.text  # MLServer's own refusal, passed through
    assert r.json()["error"].startswith("the upstream model server refused the request")
    assert "(logits was received)" in r.json()["error"]


def test_a_label_only_request_gets_the_watermarked_label(
        client: triton.InferenceServerClient, auth: dict[str, str]) -> None:
    """The guards work on the whole answer: asking only for `label` skips no decoy."""
    rows = np.asarray(digits_rows(64), dtype=np.float32)
    truth = json_infer(client, "digits", auth, rows=rows).as_numpy("label")
    labels = json_infer(client, "digits-marked", auth, ["label"], rows=rows).as_numpy("label")
    full = json_infer(client, "digits-marked", auth, rows=rows)
    assert truth is not None and labels is not None
    assert (labels != truth).sum() > 0  # some rows carry a decoy
    assert np.array_equal(labels, full.as_numpy("label"))  # the same rows, marked alike


# -- the binary tensor data extension (tritonclient's default) -------------------------------


@pytest.mark.xfail(BINARY not in OIP_EXTENSIONS, strict=True,
                   reason="runs once the binary tensor data extension is served")
@pytest.mark.parametrize("model", ["digits", "mls"])
def test_infer_with_tritonclients_defaults(client: triton.InferenceServerClient,
                                           auth: dict[str, str], model: str) -> None:
    tensor = triton.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)  # binary_data=True: the default
    result = client.infer(model, [tensor], headers=auth)
    proba, label = result.as_numpy("probabilities"), result.as_numpy("label")
    assert proba is not None and label is not None
    assert proba.shape == (8, 10) and list(label) == list(proba.argmax(axis=1))
    only = client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("label")],
                        headers=auth, model_version="1")
    assert [o["name"] for o in only.get_response()["outputs"]] == ["label"]
    assert np.array_equal(only.as_numpy("label"), label)

