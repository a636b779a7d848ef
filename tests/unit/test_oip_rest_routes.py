"""The OIP REST routes in-process: server metadata, what readiness means (any or all models,
configured), the one served version, requested outputs, and 401 before any 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelfence.backends.base import requested_names, requested_outputs
from modelfence.config import settings_from_mapping
from modelfence.errors import BadRequest
from modelfence.gateway.app import build_app
from modelfence.gateway.oip_routes import OIP_EXTENSIONS
from modelfence.kernel.oip import InferResponse, Tensor

from ..support import digits_rows, free_port, infer_body

ADMIN = {"Authorization": "Bearer admin-" + "t" * 30}


def settings(digits: Path, needed: str = "any") -> dict[str, Any]:
    gone = {"type": "oip", "url": f"http://127.0.0.1:{free_port()}",
            "connect_timeout_s": 0.2, "timeout_s": 0.5}
    return {
        "server": {"admin_listen": None, "readiness": {"models": needed}},
        "stores": {"keys": f"sqlite:///{digits.parent / f'rest-{needed}-keys.db'}"},
        "audit": {"sink": "none://", "disabled_acknowledged": True},
        "models": [
            {"name": "digits", "backend": {"type": "skops", "path": str(digits)}},
            {"name": "digits-v7", "version": "7",
             "backend": {"type": "skops", "path": str(digits)}},
            {"name": "gone", "backend": gone,
             "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]}}]}


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", "admin-" + "t" * 30)


def serve(doc: dict[str, Any]) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = build_app(settings_from_mapping(doc))
    with TestClient(app) as client:
        admin = TestClient(app.state.admin_app)
        admin.portal = client.portal  # on the app's event loop
        key = admin.post("/admin/keys", headers=ADMIN, json={
            "principal": "p", "tenant": "t", "models": ["digits", "digits-v7", "gone"]})
        yield client, {"Authorization": f"Bearer {key.json()['key']}"}


@pytest.fixture()
def gateway(env: None, digits_files: dict[str, Path]
            ) -> Iterator[tuple[TestClient, dict[str, str]]]:
    yield from serve(settings(digits_files["skops"]))


def test_server_metadata_names_the_server_and_its_extensions(
        gateway: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = gateway
    r = client.get("/v2")
    assert r.status_code == 200
    assert r.json() == {"name": "modelfence", "version": r.json()["version"],
                        "extensions": list(OIP_EXTENSIONS)}


@pytest.mark.parametrize(("needed", "status"), [("any", 200), ("all", 503)])
def test_readiness_means_any_or_all_models(env: None, digits_files: dict[str, Path],
                                           needed: str, status: int) -> None:
    for client, auth in serve(settings(digits_files["skops"], needed)):
        assert client.get("/v2/health/ready").status_code == status
        assert client.get("/v2/models/digits/ready", headers=auth).status_code == 200
        gone = client.get("/v2/models/gone/ready", headers=auth)
        assert (gone.status_code, gone.json()) == (503, {"error": "model 'gone' is not ready"})


def test_the_served_version_answers_and_another_is_404(
        gateway: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = gateway
    body = infer_body(digits_rows(2))
    assert client.get("/v2/models/digits-v7/versions/7", headers=auth).json()["versions"] == [
        "7"]
    assert client.get("/v2/models/digits/versions/1/ready", headers=auth).status_code == 200
    assert client.post("/v2/models/digits-v7/versions/7/infer", json=body,
                       headers=auth).status_code == 200
    r = client.post("/v2/models/digits-v7/versions/1/infer", json=body, headers=auth)
    assert (r.status_code, r.json()) == (404, {"error": "model 'digits-v7' has no version "
                                                        "'1'; the gateway serves its version '7'"})


def test_an_anonymous_caller_gets_401_before_any_404(
        gateway: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = gateway
    for path in ("/v2/models/nope/ready", "/v2/models/digits/versions/9/ready",
                 "/v2/models/nope/versions/1"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=auth).status_code == 404, path


def test_requested_outputs(gateway: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = gateway
    body = infer_body(digits_rows(3))
    full = client.post("/v2/models/digits/infer", json=body, headers=auth).json()
    for asked in (["label"], ["probabilities"], ["label", "probabilities"], ["label", "label"]):
        r = client.post("/v2/models/digits/infer", headers=auth,
                        json={**body, "outputs": [{"name": n} for n in asked]})
        assert r.status_code == 200
        answered = r.json()["outputs"]
        assert [o["name"] for o in answered] == list(dict.fromkeys(asked))
        for out in answered:
            assert out == next(o for o in full["outputs"] if o["name"] == out["name"])
    r = client.post("/v2/models/digits/infer", headers=auth,
                    json={**body, "outputs": [{"name": "label"}, {"name": "x" * 500}]})
    assert r.status_code == 400
    assert r.json()["error"] == (f"body.outputs: model 'digits' has no output {'x' * 64!r} "
                                 "(its outputs: 'probabilities', 'label')")


def test_an_answer_without_a_requested_output_is_refused_naming_it() -> None:
    """An upstream passed through as is declares no outputs: its answer is checked."""
    answer = InferResponse("raw", [Tensor("predict", "INT64", [1], np.asarray([3]))], "id-1")
    assert requested_outputs(answer, requested_names(None)) is answer
    only = requested_outputs(answer, requested_names([{"name": "predict"}, {"name": "predict"}]))
    assert [t.name for t in only.outputs] == ["predict"] and only.id == "id-1"
    with pytest.raises(BadRequest, match=r"model 'raw' has no output 'logits' \(its outputs: "
                                         r"'predict'\)"):
        requested_outputs(answer, ["predict", "logits"])
