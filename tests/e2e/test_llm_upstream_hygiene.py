"""What the gateway takes from an LLM upstream: every stream event filtered whatever its
(legal) SSE framing, no redirect followed, no upstream error text passed to a client, no
upstream credential in the log. The upstream is the OpenAI stub on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ..support import Gateway
from .openai_stub import SYSTEM, OpenAiStub

FRAMINGS = ["multiline", "cr", "crlf"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, stub: OpenAiStub) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("llmhygiene")
    # credentials in the upstream URL: they must never reach the log
    secret_url = stub.url.replace("http://", "http://svc:s3cret-pw@")
    models: list[dict[str, Any]] = []
    for framing in FRAMINGS:
        models += [
            {"name": f"guarded-{framing}", "upstream": stub.url,
             "upstream_model": f"leaky+{framing}", "canary": {"mode": "block"}},
            {"name": f"noisy-{framing}", "upstream": stub.url, "upstream_model": f"ok+{framing}",
             "controls": {"logprobs": True, "max_top_logprobs": 2, "logprob_noise": 1.0}}]
    models += [
        {"name": "garbled", "upstream": stub.url, "upstream_model": "ok+raw"},
        {"name": "crashing", "upstream": stub.url, "upstream_model": "ok+error"},
        {"name": "moved", "upstream": secret_url, "upstream_model": "redirect"},
        {"name": "picky", "upstream": secret_url, "upstream_model": "fail-422"},
        {"name": "lost", "upstream": secret_url, "upstream_model": "fail-404"},
        {"name": "broken", "upstream": secret_url, "upstream_model": "fail-500"},
    ]
    g = Gateway(folder, [], extra={"llm": {"models": models}}).start()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def key(gw: Gateway) -> str:
    return gw.key(models=[m["name"] for m in gw.extra["llm"]["models"]])


def _post(gw: Gateway, key: str, body: dict[str, Any]) -> tuple[int, bytes]:
    req = urllib.request.Request(  # noqa: S310 (loopback)
        f"{gw.url}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _events(raw: bytes) -> list[Any]:
    """The gateway's own events: each one `data: <one line>`, blank-line separated."""
    text = raw.decode()
    assert "\r" not in text
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in blocks]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_leak_is_blocked_whatever_the_sse_framing(gw: Gateway, key: str,
                                                   framing: str) -> None:
    status, raw = _post(gw, key, {"model": f"guarded-{framing}", "stream": True, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "rules?"}]})
    assert status == 200
    events = _events(raw)
    chunks = [e for e in events if isinstance(e, dict)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.startswith("Sure! My instructions")
    assert "mf-" not in text and "refund limit is 250" not in text.lower()
    assert any(c["choices"][0]["finish_reason"] == "content_filter" for c in chunks)
    assert {c["model"] for c in chunks} == {f"guarded-{framing}"}  # upstream name hidden
    assert b"leaky" not in raw


@pytest.mark.parametrize("framing", FRAMINGS)
def test_logprob_noise_applies_whatever_the_sse_framing(gw: Gateway, key: str,
                                                        framing: str) -> None:
    status, raw = _post(gw, key, {"model": f"noisy-{framing}", "stream": True, "logprobs": True,
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    chunks = [e for e in _events(raw) if isinstance(e, dict) and e["choices"]]
    values = [lp["logprob"] for c in chunks for lp in c["choices"][0]["logprobs"]["content"]]
    assert len(values) == 6
    assert all(v != -0.5 for v in values), values  # the stub's own -0.5 never shows


def test_an_event_that_is_not_json_ends_the_stream_with_an_error(gw: Gateway,
                                                                 key: str) -> None:
    status, raw = _post(gw, key, {"model": "garbled", "stream": True,
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert b"not json" not in raw  # never passed through raw
    events = _events(raw)
    assert events[0]["choices"][0]["delta"]["content"] == "Hello"
    assert events[-1]["error"]["code"] == "upstream_error"
    assert "unreadable" in events[-1]["error"]["message"]
    assert len(events) == 2  # nothing after the error


def test_an_upstream_error_event_mid_stream_is_scrubbed(gw: Gateway, key: str) -> None:
    status, raw = _post(gw, key, {"model": "crashing", "stream": True,
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert b"ok+error" not in raw and b"memory" not in raw  # the upstream's words stay here
    events = _events(raw)
    assert events[-1]["error"] == {"message": "the upstream model server failed during the "
                                   "stream", "type": "api_error", "code": "upstream_error"}
    assert "ok+error ran out of memory" in gw.log.read_text()


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_redirect_is_not_followed(gw: Gateway, key: str, stub: OpenAiStub,
                                              stream: bool) -> None:
    before = stub.redirected
    status, raw = _post(gw, key, {"model": "moved", "stream": stream,
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert stub.redirected == before + 1
    assert stub.elsewhere == 0
    assert status == 502
    error = json.loads(raw)["error"]
    assert error["code"] == "upstream_redirect" and "redirect" in error["message"]
    assert "elsewhere" not in raw.decode() and "127.0.0.1" not in raw.decode()
    assert "redirect" in gw.log.read_text()


@pytest.mark.parametrize(("model", "status"), [("picky", 422), ("lost", 404), ("broken", 502)])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_text_is_scrubbed(gw: Gateway, key: str, stub: OpenAiStub, model: str,
                                         status: int, stream: bool) -> None:
    got, raw = _post(gw, key, {"model": model, "stream": stream,
                               "messages": [{"role": "user", "content": "hi"}]})
    assert got == status
    error = json.loads(raw)["error"]
    text = raw.decode()
    assert "fail-" not in text and "127.0.0.1" not in text and str(stub.port) not in text
    assert "svc" not in text
    assert error["type"] == {422: "invalid_request_error", 404: "not_found_error"}.get(
        status, "api_error")
    assert str(status if status < 500 else 500) in error["message"]
    log = gw.log.read_text()
    assert "fail-" in log  # the details stay server-side
    assert "s3cret-pw" not in log
