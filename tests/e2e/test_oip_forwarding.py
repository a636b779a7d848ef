"""Forwarding no caller can poison, against a real MLServer 1.7 (and a stub for what it sent).

First the premise, on MLServer directly: the request fields that crash its handler or make
its server drop the connection. Then the gateway in front of it: caller A sends those
fields, and requests MLServer answers with a 500 and a closed connection, while caller B
sends valid requests over the same few connections; none of B's fails. bench/oip_poison.py
runs the same at 1,000 + 1,000.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import joblib
import numpy as np
import pytest

from ..support import Gateway, digits_rows, infer_body
from .mlserver_fixture import MLServer
from .upstream_stub import UpstreamStub

pytestmark = pytest.mark.mlserver

GATEWAY_ID = re.compile(r"modelfence-[0-9a-f]{32}")
SPEC = {"name": "input", "datatype": "FP32", "shape": [-1, 64]}


@pytest.fixture(scope="module")
def mlserver(own_mlserver: MLServer) -> MLServer:
    """This module crashes MLServer's handler on purpose: a server of its own, so the
    shared one (tests/e2e/conftest.py) never sees those crashes."""
    return own_mlserver


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mlserver: MLServer) -> Iterator[Gateway]:
    oip = {"type": "oip", "url": mlserver.url, "upstream_model": "digits", "timeout_s": 10}
    gw = Gateway(tmp_path_factory.mktemp("gw-forwarding"), [
        {"name": "digits", "input": SPEC,
         "backend": {**oip, "probabilities_output": "predict_proba"}},
        {"name": "digits-raw", "input": SPEC, "backend": {**oip, "forward_parameters": ["note"]}},
        # any width passes the gateway; MLServer answers other widths with 500 and hangs up
        {"name": "digits-any", "input": {**SPEC, "shape": [-1, -1]}, "backend": oip},
    ]).start()
    yield gw
    gw.stop()


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
               key: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.post(url, data=json.dumps(body).encode(),
                            headers={**headers, "Content-Type": "application/json"}) as r:
        return r.status, await r.text()


def with_input(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**body, "inputs": [{**body["inputs"][0], **fields}]}


VALID = infer_body(digits_rows(1))
#: Sent to MLServer as is, each of these crashes its handler (500) or its server drops the
#: connection without an answer.
CRASHERS: dict[str, dict[str, Any]] = {
    "id CRLF": {**VALID, "id": "a\r\nX-Injected: 1"},
    "id non-Latin-1": {**VALID, "id": "\u2603 snow \u20ac"},
    "id spaces around": {**VALID, "id": " padded "},
    "id NUL": {**VALID, "id": "a\x00b"},
    "input content_type str": with_input(VALID, parameters={"content_type": "str"}),
    "request content_type pd": {**VALID, "parameters": {"content_type": "pd"}},
    "input _decoded_payload": with_input(VALID, parameters={"_decoded_payload": [[1.0]]}),
    "output content_type str": {**VALID, "outputs": [
        {"name": "predict", "parameters": {"content_type": "str"}}]},
}


@pytest.mark.parametrize("kind", sorted(CRASHERS))
async def test_premise_mlserver_itself_fails_on_each_field_and_drops_the_connection(
        mlserver: MLServer, kind: str) -> None:
    url = f"{mlserver.url}/v2/models/digits/infer"
    connector = aiohttp.TCPConnector(limit=1)  # one connection: the next request reuses it
    async with aiohttp.ClientSession(connector=connector) as s:
        assert (await post(s, url, VALID))[0] == 200
        try:
            status, text = await post(s, url, CRASHERS[kind])
        except aiohttp.ServerDisconnectedError:
            status, text = 0, "disconnected"
        assert status in (0, 500), (status, text[:200])


async def test_the_gateway_sends_none_of_them_and_answers_each_with_the_clients_id(
        gateway: Gateway) -> None:
    key = gateway.key()
    async with aiohttp.ClientSession() as s:
        for kind, body in CRASHERS.items():
            status, text = await post(s, f"{gateway.url}/v2/models/digits-raw/infer", body, key)
            assert status == 200, (kind, text[:300])
            assert json.loads(text).get("id") == body.get("id"), kind


async def test_mlserver_takes_a_safe_client_id(gateway: Gateway) -> None:
    """A safe id is forwarded as sent (what the upstream gets: test_what_id_the_upstream_gets
    below, on a stub that records it); MLServer answers it, and the client gets its id."""
    key = gateway.key()
    async with aiohttp.ClientSession() as s:
        status, text = await post(s, f"{gateway.url}/v2/models/digits-raw/infer",
                                  {**VALID, "id": "trace-42/a:b"}, key)
    assert status == 200, text
    assert json.loads(text)["id"] == "trace-42/a:b"


def mixed_workload(x: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], n: int
                   ) -> list[tuple[str, str, dict[str, Any], Any]]:
    """n valid requests (B) and n hostile ones (A), shuffled: (who, model, body, expected)."""
    crash = ("digits-any", infer_body([row[:32] for row in digits_rows(1)]))  # MLServer 500
    hostile = [("digits-raw", body) for body in CRASHERS.values()] + [crash] * 4 + [
        ("digits-any", with_input(VALID, shape=[1, 8, 8])),  # 400 at the gateway
        ("digits-raw", {**VALID, "id": "x" * 10_240}),  # 400 at the gateway
        ("digits-raw", {**VALID, "parameters": {"note": "n\r\n" * 10}}),  # dropped
    ]
    items: list[tuple[str, str, dict[str, Any], Any]] = []
    for i in range(n):
        row = i % len(x)
        model = ("digits", "digits-raw", "digits-any")[i % 3]
        body = {**infer_body(x[row:row + 1].tolist()), "id": f"bob-{i}"}
        items.append(("B", model, body, int(labels[row])))
        a_model, a_body = hostile[i % len(hostile)]
        items.append(("A", a_model, a_body, None))
    random.Random(19).shuffle(items)
    return items


async def test_one_callers_crashes_never_fail_another_callers_requests(
        gateway: Gateway, digits_files: dict[str, Path]) -> None:
    """Before: the gateway pooled the connection MLServer closed after A's crash and wrote
    B's request into it: B got 502 in about half of the trials."""
    x = np.asarray(digits_rows(200))
    labels = joblib.load(digits_files["joblib"]).predict(x)
    key_a, key_b = gateway.key(principal="mallory"), gateway.key(principal="bob")
    items = mixed_workload(x, labels, 150)
    failed_b: list[str] = []
    answers_a: dict[int, int] = {}
    queue = list(reversed(items))

    async def worker(a: aiohttp.ClientSession, b: aiohttp.ClientSession) -> None:
        while queue:
            who, model, body, label = queue.pop()
            url = f"{gateway.url}/v2/models/{model}/infer"
            if who == "A":
                status, _ = await post(a, url, body, key_a)
                answers_a[status] = answers_a.get(status, 0) + 1
                continue
            status, text = await post(b, url, body, key_b)
            if status != 200:
                failed_b.append(f"{model} {body['id']}: {status} {text[:200]}")
                continue
            doc = json.loads(text)
            outputs = {o["name"]: o["data"] for o in doc["outputs"]}
            got = outputs["label" if model == "digits" else "predict"]
            if doc["id"] != body["id"] or got != [label]:
                failed_b.append(f"{model} {body['id']}: answered {doc['id']} {got}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as a, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as b:
        await asyncio.gather(*(worker(a, b) for _ in range(8)))
    assert failed_b == []
    assert answers_a.get(502, 0) >= 30  # MLServer did crash under A, again and again
    assert set(answers_a) <= {200, 400, 502}, answers_a
    log = gateway.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log


@pytest.fixture(scope="module")
def stub_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway,
                                                                              UpstreamStub]]:
    with UpstreamStub() as stub:
        oip = {"type": "oip", "url": stub.url, "timeout_s": 10}
        gw = Gateway(tmp_path_factory.mktemp("gw-forwarding-stub"), [
            {"name": "busy", "input": SPEC, "backend": {**oip, "upstream_model": "overloaded"}},
            {"name": "plain", "input": SPEC, "backend": {**oip, "upstream_model": "ok"}},
            {"name": "own-ids", "input": SPEC,
             "backend": {**oip, "upstream_model": "ok", "forward_request_id": False,
                         "retry_closed_connection": False}},
        ]).start()
        try:
            yield gw, stub
        finally:
            gw.stop()


async def test_an_upstream_429_is_a_503_with_the_upstreams_retry_after(
        stub_gateway: tuple[Gateway, UpstreamStub]) -> None:
    gw, _ = stub_gateway
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v2/models/busy/infer", json=VALID,
            headers={"Authorization": f"Bearer {gw.key()}"}) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "7"  # the stub's, not the default 5
        assert await r.json() == {"error": "the upstream model server is busy; retry later"}


@pytest.mark.parametrize(("model", "client_id", "upstream_gets"), [
    ("plain", "trace-42/a:b", "trace-42/a:b"),
    ("plain", "caf\u00e9", GATEWAY_ID),
    ("plain", None, GATEWAY_ID),
    ("own-ids", "trace-42", GATEWAY_ID),
])
async def test_what_id_the_upstream_gets(stub_gateway: tuple[Gateway, UpstreamStub], model: str,
                                         client_id: str | None,
                                         upstream_gets: str | re.Pattern[str]) -> None:
    gw, stub = stub_gateway
    body = dict(VALID) if client_id is None else {**VALID, "id": client_id}
    before = len(stub.infer_requests("ok"))
    async with aiohttp.ClientSession() as s:
        status, text = await post(s, f"{gw.url}/v2/models/{model}/infer", body, gw.key())
    assert status == 200, text
    assert json.loads(text).get("id") == client_id
    (sent,) = stub.infer_requests("ok")[before:]
    if isinstance(upstream_gets, re.Pattern):
        assert upstream_gets.fullmatch(sent.body["id"]), sent.body["id"]
    else:
        assert sent.body["id"] == upstream_gets
