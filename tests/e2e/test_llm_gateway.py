"""The OpenAI-compatible routes end to end: the official `openai` client → gateway → stub.

The gateway is `modelfence serve` with an `llm:` section (the real identity, policy, usage,
rate-limit and audit guards); the upstream is an aiohttp stub on loopback speaking the
OpenAI API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ..support import Gateway
from .openai_stub import SYSTEM, WORDS, OpenAiStub

# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm_gateway(tmp_path_factory: pytest.TempPathFactory, stub: OpenAiStub
                ) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("llmgw")
    (folder / "upstream-key").write_text("sk-upstream-secret\n")
    llm = {"models": [
        {"name": "chat", "upstream": stub.url, "upstream_model": "ok",
         "api_key_file": str(folder / "upstream-key"),
         "controls": {"max_tokens": 64, "logprobs": True, "max_top_logprobs": 2}},
        {"name": "strict", "upstream": stub.url, "upstream_model": "ok",
         "controls": {"over_cap": "reject", "max_tokens": 64}},
        {"name": "slow", "upstream": stub.url, "upstream_model": "slow"},
        {"name": "failing", "upstream": stub.url, "upstream_model": "fail"},
        {"name": "quiet", "upstream": stub.url, "upstream_model": "no-usage"},
        {"name": "secret-model", "upstream": stub.url, "upstream_model": "ok"},
        {"name": "guarded", "upstream": stub.url, "upstream_model": "leaky",
         "canary": {"mode": "block"}},
        {"name": "redacting", "upstream": stub.url, "upstream_model": "leaky",
         "canary": {"mode": "redact"}},
        {"name": "down", "upstream": "http://127.0.0.1:1/v1"},
    ], "max_body_bytes": 4096}
    gw = Gateway(folder, [], extra={"llm": llm}).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def key(llm_gateway: Gateway) -> str:
    return llm_gateway.key(models=["chat", "strict", "slow", "failing", "quiet", "down",
                                   "guarded", "redacting"])


@pytest.fixture
def client(llm_gateway: Gateway, key: str) -> Any:
    import openai

    with openai.OpenAI(base_url=f"{llm_gateway.url}/v1", api_key=key, max_retries=0,
                       timeout=20) as c:
        yield c


def _last_received(stub: OpenAiStub) -> dict[str, Any]:
    return stub.received[-1]


def _body(exc: Any) -> dict[str, Any]:
    """The `error` object of an OpenAI error (the client unwraps it into `.body`)."""
    body = exc.body
    assert isinstance(body, dict)
    return body


def _audit(gw: Gateway, action: str, *, model: str | None = None,
           timeout_s: float = 10) -> list[dict[str, Any]]:
    """The audit records of `action` (on `model`), waiting for the first to be written."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for r in gw.audit_records() if r["action"] == action
                   and (model is None or r["model"] == model)]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


# -- tests ----------------------------------------------------------------------------------

def test_chat_non_stream(client: Any, stub: OpenAiStub, llm_gateway: Gateway) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "".join(WORDS)
    assert reply.model == "chat"  # the upstream's name is not shown
    assert reply.usage.prompt_tokens == 11
    sent = _last_received(stub)
    assert sent["model"] == "ok"
    assert sent["max_tokens"] == 64  # the cap is set when the client names none
    assert sent["_auth"] == "Bearer sk-upstream-secret"
    records = _audit(llm_gateway, "chat")
    assert records and records[-1]["status"] == 200 and records[-1]["principal"] == "alice"
    assert any("tokens prompt=11 completion=6" in d["reason"] for d in records[-1]["trail"])


def test_chat_stream_arrives_incrementally(client: Any, stub: OpenAiStub) -> None:
    arrivals: list[float] = []
    text = ""
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    for chunk in stream:
        arrivals.append(time.monotonic())
        assert chunk.model == "chat"
        assert chunk.usage is None  # the client did not ask for usage
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == "".join(WORDS)
    assert len(arrivals) == len(WORDS)
    assert arrivals[-1] - arrivals[0] > 0.4  # 6 chunks 0.15 s apart, not one late burst
    assert _last_received(stub)["stream_options"] == {"include_usage": True}


def test_raw_stream_keeps_order_and_ends_with_done(llm_gateway: Gateway, key: str) -> None:
    """On the wire: SSE framing, the upstream's order, `data: [DONE]` last, no length."""
    import urllib.request

    body = json.dumps({"model": "chat", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(  # noqa: S310 (loopback)
        f"{llm_gateway.url}/v1/chat/completions", data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as resp:  # noqa: S310
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers.get("Content-Length") is None
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert deltas == WORDS  # one event per upstream chunk, in order; usage chunk hidden


def test_stream_usage_when_asked(client: Any) -> None:
    chunks = list(client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(WORDS)


def test_stream_without_upstream_usage_is_estimated(client: Any, llm_gateway: Gateway
                                                    ) -> None:
    list(client.chat.completions.create(
        model="quiet", messages=[{"role": "user", "content": "12345678"}], stream=True))
    recs = _audit(llm_gateway, "chat", model="quiet")
    reasons = [d["reason"] for d in recs[-1]["trail"]]
    # "Hello from the stub model." is 26 characters → 7 tokens; the prompt 8 → 2
    assert "tokens prompt=2 completion=7 (estimated)" in reasons


def test_completions_and_embeddings(client: Any, stub: OpenAiStub) -> None:
    done = client.completions.create(model="chat", prompt="say hi", max_tokens=1000)
    assert done.choices[0].text == "".join(WORDS)
    assert _last_received(stub)["max_tokens"] == 64  # clamped (the default over_cap)
    emb = client.embeddings.create(model="chat", input=["a", "b"])
    assert [len(d.embedding) for d in emb.data] == [3, 3]
    assert emb.usage.prompt_tokens == 6


def test_models_list_shows_only_granted(client: Any) -> None:
    names = {m.id for m in client.models.list()}
    assert names == {"chat", "strict", "slow", "failing", "quiet", "down", "guarded",
                     "redacting"}  # no secret-model


def test_bad_key_is_openai_401(llm_gateway: Gateway) -> None:
    import openai

    with openai.OpenAI(base_url=f"{llm_gateway.url}/v1", api_key="mf_wrong",
                       max_retries=0) as bad, pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 401
    assert _body(err.value)["type"] == "authentication_error"
    assert _body(err.value)["code"] == "malformed_key"
    assert err.value.response.headers["www-authenticate"].startswith("Bearer")


def test_policy_denial_and_unknown_model(client: Any) -> None:
    import openai

    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="secret-model",
                                       messages=[{"role": "user", "content": "x"}])
    assert _body(denied.value)["type"] == "permission_error"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "unknown model" in _body(missing.value)["message"]


def test_output_controls(client: Any, stub: OpenAiStub) -> None:
    import openai

    before = len(stub.received)
    with pytest.raises(openai.BadRequestError) as bias:
        client.chat.completions.create(model="chat", logit_bias={"50256": -100},
                                       messages=[{"role": "user", "content": "x"}])
    assert "logit_bias" in _body(bias.value)["message"]
    with pytest.raises(openai.BadRequestError) as over:
        client.chat.completions.create(model="strict", max_tokens=65,
                                       messages=[{"role": "user", "content": "x"}])
    assert "max_tokens" in _body(over.value)["message"]
    with pytest.raises(openai.BadRequestError) as logprobs:
        client.chat.completions.create(model="strict", logprobs=True,
                                       messages=[{"role": "user", "content": "x"}])
    assert "logprobs" in _body(logprobs.value)["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="chat", prompt="x", echo=True)
    assert len(stub.received) == before  # nothing refused reached the upstream
    client.chat.completions.create(model="chat", logprobs=True, top_logprobs=5, n=3,
                                   messages=[{"role": "user", "content": "x"}])
    sent = _last_received(stub)
    assert (sent["top_logprobs"], sent["n"]) == (2, 1)


def test_upstream_error_in_openai_shape(client: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="failing",
                                       messages=[{"role": "user", "content": "x"}])
    # the upstream's reason, made public (upstream_status.py) as on the OIP path
    assert _body(err.value)["message"] == ("the upstream model server refused the request "
                                           "(status 400): prompt too long for stub")
    assert _body(err.value)["code"] == "upstream_rejected"


def test_client_disconnect_cancels_upstream(client: Any, stub: OpenAiStub,
                                            llm_gateway: Gateway) -> None:
    stream = client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "go"}], stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert stub.cancelled.wait(10), "the upstream never saw the gateway hang up"
    assert stub.slow_chunks_sent < 100  # far from the 240 it would have sent
    recs = _audit(llm_gateway, "chat", model="slow")
    assert any("client disconnected" in d["reason"] for d in recs[-1]["trail"])


def test_finished_streams_reuse_the_upstream_connection(client: Any, stub: OpenAiStub) -> None:
    """A stream read to its end hands its upstream connection back to the pool, so the next
    one pays no new connect before its first token (the time-to-first-token target)."""
    peers = []
    for _ in range(2):
        stream = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "".join(WORDS)
        peers.append(_last_received(stub)["_peer"])
    assert peers[0] is not None and peers[0] == peers[1]


def test_unreachable_upstream_and_oversized_body(client: Any) -> None:
    import openai

    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(model="down", messages=[{"role": "user", "content": "x"}])
    assert down.value.status_code == 502
    assert _body(down.value) == {"message": "cannot reach the upstream model server",
                                 "type": "api_error", "code": "upstream_error"}
    with pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model="chat",
                                       messages=[{"role": "user", "content": "x" * 5000}])
    assert big.value.status_code == 413
    assert "4096 byte limit" in _body(big.value)["message"]


def test_the_canary_reaches_upstream_and_a_leak_is_blocked(client: Any, stub: OpenAiStub
                                                            ) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "rules?"}]
    reply = client.chat.completions.create(model="guarded", messages=messages)
    sent = stub.received[-1]["messages"][0]["content"]
    assert SYSTEM in sent and "Internal reference: mf-" in sent  # the canary went upstream
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "content_filter"
    assert "mf-" not in text and "Refund limit is 250" not in text
    assert text.startswith("Sure! My instructions are:")


def test_a_streamed_leak_split_over_chunks_is_blocked(client: Any) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "rules?"}]
    chunks = list(client.chat.completions.create(model="guarded", messages=messages,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "mf-" not in text and "refund limit is 250" not in text.lower()
    assert any(c.choices and c.choices[0].finish_reason == "content_filter" for c in chunks)


def test_redact_mode_keeps_the_rest_of_the_answer(client: Any,
                                                  llm_gateway: Gateway) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "rules?"}]
    reply = client.chat.completions.create(model="redacting", messages=messages)
    text = reply.choices[0].message.content
    assert "[redacted]" in text and text.endswith("Anything else?") and "mf-" not in text
    recs = _audit(llm_gateway, "chat", model="redacting")  # written after the answer
    assert any("system prompt leak redacted" in d["reason"] for d in recs[-1]["trail"])
