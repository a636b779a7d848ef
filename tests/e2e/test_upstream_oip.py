"""A real gateway process in front of an upstream OIP server that answers, fails or hangs.

The upstream is tests/e2e/upstream_stub.py on loopback; each gateway model points at one
of its modes through `backend.upstream_model`, so one gateway shows every path: a normal
answer reshaped into the classifier contract, 4xx passed through with the upstream's
message made public, and 5xx, garbage, silence or nobody listening turned into 502/504 without the
upstream's body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support import Gateway, digits_rows, free_port, infer_body
from .upstream_stub import REJECT_MESSAGE, TRACEBACK_SECRETS, UpstreamStub, stub_probabilities

TIMEOUT_S = 0.5
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INPUT = {"name": "input", "datatype": "FP32", "shape": [-1, 64]}


def oip_model(name: str, url: str, upstream: str | None = None, *, declare_input: bool = True,
              **extra: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {"type": "oip", "url": url, "timeout_s": TIMEOUT_S,
                               "connect_timeout_s": TIMEOUT_S,
                               "probabilities_output": "predict_proba"}
    if upstream is not None:
        backend["upstream_model"] = upstream
    model: dict[str, Any] = {"name": name, "backend": backend, **extra}
    if declare_input:
        model["input"] = INPUT
    return model


@dataclass
class Setup:
    gateway: Gateway
    stub: UpstreamStub
    key: str

    async def infer(self, model: str, body: dict[str, Any] | None = None
                    ) -> tuple[int, dict[str, Any], str]:
        """(status, JSON body, raw text) of one infer call through the gateway."""
        body = body if body is not None else infer_body(digits_rows(2))
        async with aiohttp.ClientSession() as s, s.post(
                f"{self.gateway.url}/v2/models/{model}/infer", json=body,
                headers={"Authorization": f"Bearer {self.key}"}) as r:
            text = await r.text()
            doc = await r.json(content_type=None)
            return r.status, doc, text


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with UpstreamStub(slow_s=3.0) as stub:
        nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        # credentials in the upstream URL: they must never reach a log line
        secret_url = stub.url.replace("http://", "http://svc:s3cret-pw@")
        models = [
            oip_model("up-ok", stub.url, "ok"),
            oip_model("up-named", stub.url, "ok", labels=DIGIT_NAMES),
            oip_model("up-auto", stub.url, "ok", declare_input=False),
            oip_model("up-slow", stub.url, "slow"),
            oip_model("up-reject", stub.url, "reject"),
            oip_model("up-detail", stub.url, "detail"),
            oip_model("up-missing", stub.url, "missing"),
            oip_model("up-crash", stub.url, "crash"),
            oip_model("up-unauthorized", stub.url, "unauthorized"),
            oip_model("up-overloaded", stub.url, "overloaded"),
            oip_model("up-garbage", stub.url, "garbage"),
            oip_model("up-not-oip", stub.url, "not-oip"),
            oip_model("up-no-proba", stub.url, "no-proba"),
            oip_model("up-big", stub.url, "big"),
            oip_model("up-down", nobody),
            oip_model("up-moved", secret_url, "redirect"),
            oip_model("up-crash-auth", secret_url, "crash"),
            oip_model("up-params", stub.url, "ok"),
        ]
        models[-1]["backend"]["forward_parameters"] = ["trace", "priority"]
        gw = Gateway(tmp_path_factory.mktemp("gw-upstream"), models).start()
        try:
            yield Setup(gw, stub, gw.key())
        finally:
            gw.stop()


def assert_clean_error(doc: dict[str, Any], text: str) -> str:
    """The gateway's error shape: exactly {"error": str}, with nothing of a traceback."""
    assert set(doc) == {"error"}, doc
    assert isinstance(doc["error"], str) and doc["error"]
    for secret in (*TRACEBACK_SECRETS, "Traceback", 'File "', "aiohttp", "Errno"):
        assert secret not in text, f"{secret!r} leaked to the client: {text}"
    return str(doc["error"])


# -- normal answers ---------------------------------------------------------------------------


async def test_normal_answer_is_reshaped_into_probabilities_and_label(setup: Setup) -> None:
    rows = digits_rows(3)
    status, doc, text = await setup.infer("up-ok", infer_body(rows))
    assert status == 200, text
    assert doc["model_name"] == "up-ok"  # the gateway's name, not the upstream's "ok"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert set(outputs) == {"probabilities", "label"}
    assert outputs["probabilities"]["shape"] == [3, 10]
    assert outputs["probabilities"]["datatype"] == "FP32"
    proba = np.asarray(outputs["probabilities"]["data"]).reshape(3, 10)
    expected = stub_probabilities(np.asarray(rows))
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    assert outputs["label"] == {"name": "label", "shape": [3], "datatype": "INT64",
                                "data": np.argmax(expected, axis=1).tolist()}


async def test_gateway_asks_upstream_for_the_probabilities_output_as_json(setup: Setup) -> None:
    rows = digits_rows(2)
    before = len(setup.stub.infer_requests("ok"))
    status, _, text = await setup.infer("up-ok", infer_body(rows))
    assert status == 200, text
    sent = setup.stub.infer_requests("ok")[before:]
    assert len(sent) == 1
    assert sent[0].content_type.startswith("application/json")
    assert sent[0].body["outputs"] == [{"name": "predict_proba"}]
    (tensor,) = sent[0].body["inputs"]
    assert tensor["name"] == "input" and tensor["datatype"] == "FP32"
    assert tensor["shape"] == [2, 64]
    np.testing.assert_allclose(tensor["data"], np.ravel(rows), atol=1e-7)


async def test_configured_labels_name_the_classes(setup: Setup) -> None:
    rows = digits_rows(4)
    status, doc, text = await setup.infer("up-named", infer_body(rows))
    assert status == 200, text
    label = next(o for o in doc["outputs"] if o["name"] == "label")
    expected = np.argmax(stub_probabilities(np.asarray(rows)), axis=1)
    assert label["datatype"] == "BYTES"
    assert label["data"] == [DIGIT_NAMES[i] for i in expected]


async def test_large_upstream_answer_is_read_whole(setup: Setup) -> None:
    """An answer that arrives in many socket reads (about 1 MiB) is read to its end."""
    rows = digits_rows(3)
    status, doc, text = await setup.infer("up-big", infer_body(rows))
    assert status == 200, text
    proba = next(o for o in doc["outputs"] if o["name"] == "probabilities")
    np.testing.assert_allclose(np.reshape(proba["data"], (3, 10)),
                               stub_probabilities(np.asarray(rows)), atol=1e-6)


async def test_input_metadata_is_read_from_the_upstream_when_not_declared(setup: Setup) -> None:
    async with aiohttp.ClientSession() as s, s.get(
            f"{setup.gateway.url}/v2/models/up-auto",
            headers={"Authorization": f"Bearer {setup.key}"}) as r:
        assert r.status == 200
        meta = await r.json()
    assert meta["inputs"] == [INPUT]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    status, _, text = await setup.infer("up-auto")
    assert status == 200, text


async def test_bad_input_is_refused_by_the_gateway_and_never_sent_upstream(setup: Setup) -> None:
    before = len(setup.stub.infer_requests("ok"))
    bad = infer_body([row[:32] for row in digits_rows(2)])
    status, doc, text = await setup.infer("up-ok", bad)
    assert status == 400
    assert "shape" in assert_clean_error(doc, text)
    assert len(setup.stub.infer_requests("ok")) == before


@pytest.mark.parametrize(("model", "request_parameters"), [
    ("up-ok", None),
    ("up-params", {"trace": "t-1", "priority": 2}),
])
async def test_upstream_gets_neither_an_unsafe_id_nor_parameters_off_the_allow_list(
        setup: Setup, model: str, request_parameters: dict[str, Any] | None) -> None:
    """Client ids and parameters crashed MLServer when forwarded as sent (tests/e2e/
    test_mlserver.py); the answer still carries the client's id."""
    body = infer_body(digits_rows(1))
    body["id"] = "a\r\nX-Injected: 1"
    body["parameters"] = {"trace": "t-1", "priority": 2, "content_type": "pd",
                          "headers": {"X": "1"}, "other": "x"}
    body["inputs"][0]["parameters"] = {"content_type": "str", "trace": {"deep": 1},
                                       "priority": "x\r\n"}
    before = len(setup.stub.infer_requests("ok"))
    status, doc, text = await setup.infer(model, body)
    assert status == 200, text
    assert doc["id"] == body["id"]
    (sent,) = setup.stub.infer_requests("ok")[before:]
    assert sent.body["id"].startswith("modelfence-")  # the gateway's own id, not the CRLF one
    assert sent.body.get("parameters") == request_parameters
    assert "parameters" not in sent.body["inputs"][0]
    assert sent.body["outputs"] == [{"name": "predict_proba"}]


# -- failures ---------------------------------------------------------------------------------


async def test_upstream_down_is_502_without_details(setup: Setup) -> None:
    status, doc, text = await setup.infer("up-down")
    assert status == 502
    message = assert_clean_error(doc, text)
    assert "upstream" in message
    assert "127.0.0.1" not in message  # the upstream's address is not the client's business


async def test_upstream_slower_than_timeout_is_504(setup: Setup) -> None:
    started = time.monotonic()
    status, doc, text = await setup.infer("up-slow")
    elapsed = time.monotonic() - started
    assert status == 504
    assert "upstream" in assert_clean_error(doc, text)
    assert elapsed < setup.stub.slow_s - 0.5, f"the gateway waited {elapsed:.2f} s"


@pytest.mark.parametrize(("model", "status", "message"), [
    ("up-reject", 422, REJECT_MESSAGE),
    # the upstream's internal model name is replaced by the gateway's public one
    ("up-missing", 404, "Model up-missing not found"),
    ("up-detail", 400, "field required"),
])
async def test_upstream_4xx_passes_through_with_its_message(
        setup: Setup, model: str, status: int, message: str) -> None:
    got, doc, text = await setup.infer(model)
    assert got == status
    error = assert_clean_error(doc, text)
    assert message in error
    assert error.startswith(f"the upstream model server refused the request (status {status})")


async def test_upstream_refusing_the_gateway_itself_is_502(setup: Setup) -> None:
    """An upstream 401 is about the gateway's credentials, not the client's key."""
    status, doc, text = await setup.infer("up-unauthorized")
    assert status == 502
    assert "refused the gateway" in assert_clean_error(doc, text)


async def test_upstream_500_traceback_becomes_502_without_the_traceback(setup: Setup) -> None:
    status, doc, text = await setup.infer("up-crash")
    assert status == 502
    assert "upstream" in assert_clean_error(doc, text)
    assert "hunter2" not in text


@pytest.mark.parametrize("model", ["up-garbage", "up-not-oip", "up-no-proba"])
async def test_upstream_garbage_is_502(setup: Setup, model: str) -> None:
    status, doc, text = await setup.infer(model)
    assert status == 502
    message = assert_clean_error(doc, text)
    assert "upstream" in message
    assert "nginx" not in text and "hello" not in text


async def test_an_upstream_redirect_is_not_followed(setup: Setup) -> None:
    """Following it would send the client's inputs somewhere the config never named."""
    followed = len(setup.stub.infer_requests("ok"))
    status, doc, text = await setup.infer("up-moved")
    assert status == 502
    assert "redirect" in assert_clean_error(doc, text)
    assert len(setup.stub.infer_requests("redirect")) == 1
    assert len(setup.stub.infer_requests("ok")) == followed
    assert (f"upstream http://127.0.0.1:{setup.stub.port}/v2/models/redirect answered a "
            "redirect (307); not followed") in setup.gateway.log.read_text()


async def test_upstream_urls_are_logged_without_credentials(setup: Setup) -> None:
    assert (await setup.infer("up-crash-auth"))[0] == 502
    assert (await setup.infer("up-moved"))[0] == 502
    log = setup.gateway.log.read_text()
    assert f"upstream http://127.0.0.1:{setup.stub.port}/v2/models/crash failed" in log
    assert "s3cret-pw" not in log and "svc:" not in log


async def test_readiness_names_the_unreachable_upstream(setup: Setup) -> None:
    """On the admin listener; the public readiness names no model (test_admin_listener)."""
    async with aiohttp.ClientSession() as s, s.get(
            f"{setup.gateway.admin_url}/admin/ready") as r:
        assert r.status == 200  # up-ok serves (readiness.models: any)
        doc = await r.json()
    assert doc["ready"] is True
    assert "model up-down" in doc["not_ready"]
    assert "model up-ok" not in doc["not_ready"]


# -- metrics ----------------------------------------------------------------------------------


async def upstream_error_counts(gw: Gateway) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.admin_url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelfence_upstream_errors_total":
                counts[(sample.labels["model"], sample.labels["kind"])] = sample.value
    return counts


async def test_metrics_count_upstream_errors_by_model_and_kind(setup: Setup) -> None:
    expected = {
        ("up-down", "upstream_error"): 1.0,
        ("up-slow", "upstream_timeout"): 1.0,
        ("up-reject", "upstream_rejected"): 1.0,
        ("up-crash", "upstream_error"): 1.0,
        ("up-garbage", "upstream_error"): 1.0,
    }
    before = await upstream_error_counts(setup.gateway)
    statuses = await asyncio.gather(*(setup.infer(model) for model, _ in expected))
    assert [s for s, _, _ in statuses] == [502, 504, 422, 502, 502]
    # answers that are not upstream failures are not counted as such
    assert (await setup.infer("up-ok"))[0] == 200
    assert (await setup.infer("up-ok", infer_body([[0.0] * 3])))[0] == 400

    deadline = time.monotonic() + 5.0  # the counters move in a task after each answer
    while True:
        after = await upstream_error_counts(setup.gateway)
        delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
        if delta == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert delta == expected


async def test_failures_are_audited_without_upstream_text_or_gateway_traceback(
        setup: Setup) -> None:
    """Upstream failures are expected events: audited by reason, never an internal error."""
    for model in ("up-crash", "up-down", "up-garbage"):
        assert (await setup.infer(model))[0] == 502
    deadline = time.monotonic() + 5.0  # the audit record is written after the answer
    while True:
        records = [r for r in setup.gateway.audit_records() if r["model"] == "up-crash"]
        if records or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert records and all(r["status"] == 502 and r["reason"] == "upstream_error"
                           for r in records)
    for text in (setup.gateway.log.read_text(),
                 (setup.gateway.folder / "audit.jsonl").read_text()):
        assert "Traceback" not in text
        assert "SECRET_INTERNAL_DETAIL" not in text
        assert "internal error" not in text
