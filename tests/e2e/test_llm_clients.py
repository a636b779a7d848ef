"""LLM clients work through the gateway unchanged: LangChain's OpenAI classes
(langchain-openai) and the official `openai` client → a real `modelfence serve` → the
aiohttp stub upstream.

Neutral values (`logit_bias: {}`, `top_logprobs: 0`, `logprobs: false`, `n: 1`, nulls) pass
where the controls forbid the field and are no probe for the risk book; a clamp is announced
(`X-Modelfence-Clamped` and the audit trail); every error under /v1 is an OpenAI error
object; a request OpenAI would refuse never reaches the upstream.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ..support import Gateway
from .openai_stub import WORDS, OpenAiStub

HI = [{"role": "user", "content": "hi"}]
ANSWER = "".join(WORDS)
MODELS = ["locked", "clamping", "vllm", "tuned:v1"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, stub: OpenAiStub) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("llmclients")
    llm = {"models": [
        # the default controls: no logprobs, logit_bias refused, n and best_of 1, no echo
        {"name": "locked", "upstream": stub.url, "upstream_model": "ok",
         "controls": {"max_tokens": 300}},
        {"name": "clamping", "upstream": stub.url, "upstream_model": "ok",
         "controls": {"max_n": 2, "max_tokens": 64}},
        {"name": "vllm", "upstream": stub.url, "upstream_model": "ok",
         "extra_fields": ["top_k"]},
        {"name": "hidden", "upstream": stub.url, "upstream_model": "ok"},
        {"name": "tuned:v1", "upstream": stub.url, "upstream_model": "ok"},
    ]}
    g = Gateway(folder, [], extra={"llm": llm}).start()
    try:
        yield g
    finally:
        g.stop()


def _client(gw: Gateway, key: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


def _raw(gw: Gateway, method: str, path: str, key: str | None = None,
         body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers named in lower case, JSON body) of a request sent as is."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{gw.url}{path}", data=data, method=method,  # noqa: S310
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:  # noqa: S310 (loopback)
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


def _risk(gw: Gateway, model: str, principal: str) -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 (loopback)
        f"{gw.admin_url}/admin/risk/{model}?principal={principal}",
        headers={"Authorization": f"Bearer {gw.admin_token}"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def _audit(gw: Gateway, action: str, model: str, principal: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in gw.audit_records() if r["action"] == action
                   and r.get("model") == model and r.get("principal") == principal]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _said(exc: Any) -> str:
    """The message of an OpenAI error the client raised (its `body` is the error object)."""
    body = exc.body
    assert isinstance(body, dict)
    return str(body["message"])


def _openai_error(doc: Any) -> dict[str, Any]:
    """The `error` object, checked to be OpenAI's shape."""
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    error = doc["error"]
    assert {"message", "type", "code"} <= set(error), error
    assert all(isinstance(error[k], str) and error[k] for k in ("message", "type", "code"))
    return dict(error)


# -- LangChain ----------------------------------------------------------------------------------

def test_langchain_chat_invokes_and_streams_with_neutral_values(
        gw: Gateway, stub: OpenAiStub) -> None:
    from langchain_openai import ChatOpenAI

    key = gw.key(models=MODELS, principal="lc-chat")
    chat = ChatOpenAI(model="locked", base_url=f"{gw.url}/v1", api_key=key,
                      max_retries=0, timeout=20, logit_bias={}, logprobs=False,
                      top_logprobs=0, n=1)
    assert chat.invoke("hello").content == ANSWER
    sent = stub.received[-1]
    assert (sent["logit_bias"], sent["logprobs"], sent["top_logprobs"], sent["n"]) == (
        {}, False, 0, 1)  # passed as the client sent them
    assert "".join(str(c.content) for c in chat.stream("hello")) == ANSWER
    assert stub.received[-1]["stream"] is True
    _no_probe(gw, "locked", "lc-chat")


def test_langchain_completions_invoke_and_stream_with_its_defaults(
        gw: Gateway, stub: OpenAiStub) -> None:
    from langchain_openai import OpenAI

    key = gw.key(models=MODELS, principal="lc-completion")
    # logit_bias {}: what older langchain-openai sends on every call; seed and logprobs go
    # as null; echo false through model_kwargs
    llm = OpenAI(model="locked", base_url=f"{gw.url}/v1", api_key=key,
                 max_retries=0, timeout=20, logit_bias={}, model_kwargs={"echo": False})
    assert llm.invoke("hello") == ANSWER
    sent = stub.received[-1]
    assert sent["logit_bias"] == {} and sent["n"] == 1 and sent["max_tokens"] == 256
    assert "seed" not in sent and "logprobs" not in sent  # null: OpenAI's "not given"
    assert "".join(llm.stream("hello")) == ANSWER
    with _client(gw, key) as client:  # the openai client's own neutral values
        done = client.completions.create(model="locked", prompt="x", n=1, best_of=1,
                                         echo=False, logit_bias={}, logprobs=None)
        assert done.choices[0].text == ANSWER
        chat = client.chat.completions.create(model="locked", messages=HI, n=1,
                                              logprobs=False, top_logprobs=0, logit_bias={})
        assert chat.choices[0].message.content == ANSWER
    _no_probe(gw, "locked", "lc-completion")


def _no_probe(gw: Gateway, model: str, principal: str) -> None:
    """The calls were scored (tokens) and none of them counted as a probe."""
    deadline = time.monotonic() + 10
    while (risk := _risk(gw, model, principal))["queries"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert risk["queries"] >= 2, risk
    for kind in ("probe", "sampling", "clamp"):
        assert risk["detectors"].get(kind, {"score": 0.0})["score"] == 0.0, (kind, risk)


# -- clamps announced ---------------------------------------------------------------------------

def test_a_clamp_is_announced_in_a_header_and_the_audit_record(
        gw: Gateway, stub: OpenAiStub) -> None:
    key = gw.key(models=MODELS, principal="clamped")
    with _client(gw, key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="clamping", messages=HI, n=3, max_tokens=1000)
        assert raw.headers["x-modelfence-clamped"] == "n,max_tokens"
        assert raw.parse().choices[0].message.content == ANSWER
        assert (stub.received[-1]["n"], stub.received[-1]["max_tokens"]) == (2, 64)
        streamed = client.chat.completions.with_raw_response.create(
            model="clamping", messages=HI, n=3, stream=True)
        assert streamed.headers["x-modelfence-clamped"] == "n"
        assert "".join(c.choices[0].delta.content or "" for c in streamed.parse()
                       if c.choices) == ANSWER
        best = client.completions.with_raw_response.create(model="clamping", prompt="x",
                                                           best_of=3)
        assert best.headers["x-modelfence-clamped"] == "best_of"
        within = client.chat.completions.with_raw_response.create(
            model="clamping", messages=HI, n=2, max_tokens=64)
        assert "x-modelfence-clamped" not in within.headers
    reasons = [d["reason"] for r in _audit(gw, "chat", "clamping", "clamped")
               for d in r["trail"]]
    assert "clamped to the band's limits: n 3 -> 2, max_tokens 1000 -> 64" in reasons


# -- errors in the OpenAI shape -----------------------------------------------------------------

def test_models_retrieve_answers_the_model_or_an_openai_404(gw: Gateway) -> None:
    import openai

    key = gw.key(models=MODELS, principal="lister")
    with _client(gw, key) as client:
        model = client.models.retrieve("locked")
        assert (model.id, model.object) == ("locked", "model")
        assert client.models.retrieve("tuned:v1").id == "tuned:v1"
        assert {m.id for m in client.models.list()} == set(MODELS)
        for name in ("nope", "hidden"):  # one the key may not use is as unknown
            with pytest.raises(openai.NotFoundError) as missing:
                client.models.retrieve(name)
            assert _said(missing.value) == (
                f"the model '{name}' does not exist or you do not have access to it")
            assert _openai_error(missing.value.response.json())["code"] == "unknown_model"
        with pytest.raises(openai.NotFoundError) as route:
            client.get("/nothing", cast_to=object)
        assert _said(route.value) == "unknown route: GET /v1/nothing"
    status, _, doc = _raw(gw, "GET", "/v1/nothing")  # no key: still OpenAI's shape
    assert status == 404 and _openai_error(doc)["type"] == "not_found_error"
    status, headers, doc = _raw(gw, "GET", "/v1/chat/completions", key)
    assert status == 405 and headers["allow"] == "POST"
    assert _openai_error(doc)["code"] == "method_not_allowed"
    status, headers, doc = _raw(gw, "DELETE", "/v1/models/locked", key)
    assert status == 405 and "GET" in headers["allow"]
    for path in ("/v1", "/v1/"):
        status, _, doc = _raw(gw, "PUT", path, key)
        assert status == 404 and _openai_error(doc)["code"] == "not_found"
    status, _, doc = _raw(gw, "GET", "/v1/models/locked")
    assert status == 401 and _openai_error(doc)["type"] == "authentication_error"


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "locked"}, "messages: required"),
    ({"model": "locked", "messages": []}, "messages: must be a non-empty list of messages"),
    ({"model": "locked", "messages": [{"content": "hi"}]}, "messages[0].role: must be one of"),
    ({"model": "locked", "messages": HI, "temperature": 9}, "temperature: must be between"),
    ({"model": "locked", "messages": HI, "chat_template": "{{ system }}"},
     "unrecognized request argument supplied: 'chat_template'"),
    ({"model": "locked", "messages": HI, "top_k": 5},
     "unrecognized request argument supplied: 'top_k'"),
])
def test_a_request_openai_refuses_never_reaches_the_upstream(
        gw: Gateway, stub: OpenAiStub, body: dict[str, Any], message: str) -> None:
    import openai

    key = gw.key(models=MODELS, principal="malformed")
    before = len(stub.received)
    with _client(gw, key) as client, pytest.raises(openai.BadRequestError) as err:
        client.post("/chat/completions", body=body, cast_to=object)
    assert _said(err.value).startswith(message), err.value.body
    assert _openai_error(err.value.response.json())["type"] == "invalid_request_error"
    assert len(stub.received) == before


def test_completions_and_embeddings_need_their_input_and_listed_extras_pass(
        gw: Gateway, stub: OpenAiStub) -> None:
    import openai

    key = gw.key(models=MODELS, principal="extras")
    before = len(stub.received)
    with _client(gw, key) as client:
        with pytest.raises(openai.BadRequestError, match="prompt: required"):
            client.post("/completions", body={"model": "locked"}, cast_to=object)
        with pytest.raises(openai.BadRequestError, match="input: required"):
            client.post("/embeddings", body={"model": "locked"}, cast_to=object)
        assert len(stub.received) == before
        client.chat.completions.create(model="vllm", messages=HI, extra_body={"top_k": 5})
    assert stub.received[-1]["top_k"] == 5  # the model lists it: passed on as sent
