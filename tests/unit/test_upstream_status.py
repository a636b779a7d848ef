"""One mapping of an upstream's error status to what a client is told (OIP and LLM alike)."""

from __future__ import annotations

import email.utils
import time

import orjson
import pytest

from modelfence.backends.upstream_status import (
    BUSY_RETRY_S,
    MAX_REASON_CHARS,
    MAX_RETRY_S,
    public_reason,
    retry_after_s,
    upstream_failure,
    upstream_text,
)
from modelfence.errors import Unavailable, UpstreamError, UpstreamRejected

WHERE = "http://10.0.0.7:8080/v1/chat/completions"


def failure(status: int, doc: object, retry_after: str | None = None) -> Exception:
    return upstream_failure(status, orjson.dumps(doc), model="support-bot",
                            upstream_model="llama-3-70b-internal", where=WHERE,
                            retry_after=retry_after)


@pytest.mark.parametrize(("body", "text"), [
    (b'{"error": {"message": "too long"}}', "too long"),
    (b'{"error": "bad"}', "bad"),
    (b'{"detail": "nope"}', "nope"),
    (b'{"detail": [{"loc": ["body", "inputs"], "msg": "field required"}]}',
     "body.inputs: field required"),
    (b'{"message": "bare"}', "bare"),
    (b"<html>502</html>", ""),
    (b"Traceback (most recent call last):", ""),
    (b"[1, 2]", ""),
    (b'{"error": {"message": "a\\u0000b\\nc"}}', "a b c"),
])
def test_upstream_text_reads_the_shapes_servers_use(body: bytes, text: str) -> None:
    assert " ".join(upstream_text(body).split()) == text


def test_a_4xx_passes_through_without_the_upstreams_internals() -> None:
    err = failure(404, {"error": {"message": (
        "The model `llama-3-70b-internal` does not exist at http://10.0.0.7:8080/v1 "
        "(weights /srv/models/llama-3-70b-internal/model.safetensors, node gpu-7.cluster"
        ".local:9000, key sk-proj-ABCDEFGHIJKLMNOPQRSTUV)")}})
    assert isinstance(err, UpstreamRejected) and err.status == 404
    message = err.message
    assert message.startswith("the upstream model server refused the request (status 404): ")
    assert "The model `support-bot` does not exist" in message
    for secret in ("llama-3-70b-internal", "10.0.0.7", "8080", "/srv", "gpu-7", "sk-proj"):
        assert secret not in message, message


def test_a_4xx_reason_keeps_what_the_client_can_act_on() -> None:
    text = ("This model's maximum context length is 4096 tokens. However, you requested "
            "5000 tokens (4000 in the messages, 1000 in the completion).")
    err = failure(400, {"error": {"message": text, "type": "invalid_request_error"}})
    assert isinstance(err, UpstreamRejected)
    assert err.message.endswith(text)


def test_an_echoed_request_is_left_out() -> None:
    """pydantic (vLLM) echoes the value it refused: the prompt the gateway sent."""
    echo = ("1 validation error for ChatCompletionRequest messages.0.content Input should "
            "be a valid string [type=string_type, input_value={'role': 'system', 'content': "
            "'Internal reference: mf-1234abcd'}, input_type=dict]")
    message = failure(400, {"error": {"message": echo}}).args[0]
    assert "mf-1234abcd" not in message and "Internal reference" not in message
    assert "Input should be a valid string" in message


def test_a_long_reason_is_bounded() -> None:
    message = failure(422, {"error": "x " * 5000}).args[0]
    assert len(message) < MAX_REASON_CHARS + 80


def test_no_text_gives_the_status_alone() -> None:
    err = upstream_failure(400, b"<html>", model="m", upstream_model="m", where=WHERE)
    assert err.args[0] == "the upstream model server refused the request (status 400)"


@pytest.mark.parametrize("status", [401, 403, 407])
def test_the_upstream_refusing_the_gateway_is_a_502(status: int) -> None:
    err = failure(status, {"error": "invalid upstream token sk-ABCDEFGHIJKLMNOPQRST"})
    assert type(err) is UpstreamError and err.status == 502
    assert err.message == f"the upstream model server refused the gateway (status {status})"


def test_an_upstream_429_is_a_503_with_its_retry_after() -> None:
    err = failure(429, {"error": "rate limit of org-123 reached"}, retry_after="17")
    assert isinstance(err, Unavailable) and err.status == 503
    assert err.reason == "upstream_busy"
    assert err.headers() == {"Retry-After": "17"}
    assert "org-123" not in err.message and "busy" in err.message


@pytest.mark.parametrize(("value", "seconds"), [
    (None, BUSY_RETRY_S), ("", BUSY_RETRY_S), ("soon", BUSY_RETRY_S), ("nan", BUSY_RETRY_S),
    ("0", 1), ("-5", 1), ("2.2", 3), ("99999999", MAX_RETRY_S), (" 30 ", 30),
])
def test_retry_after_is_read_and_bounded(value: str | None, seconds: int) -> None:
    assert retry_after_s(value) == seconds


def test_retry_after_may_be_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= retry_after_s(when) <= 61


@pytest.mark.parametrize(("status", "kind"), [(301, "upstream_redirect"), (307,
                         "upstream_redirect"), (500, "upstream_error"), (503, "upstream_error"),
                         (204, "upstream_error")])
def test_redirects_and_server_failures_are_502_without_the_body(status: int,
                                                                  kind: str) -> None:
    err = failure(status, {"error": "Traceback: /srv/app.py db_password=hunter2"})
    assert type(err) is UpstreamError and err.status == 502 and err.reason == kind
    assert "hunter2" not in err.message and "/srv" not in err.message


def test_ordinary_words_survive_the_scrub() -> None:
    text = "input-0: shape [1, 63] does not match [-1, 64]; use body/inputs and 12:30"
    assert public_reason(text, model="m", upstream_model="m") == text


def test_an_org_prefixed_upstream_name_is_hidden_whole_and_in_part() -> None:
    text = ("The model `meta-llama/Llama-3.1-8B` does not exist; try Llama-3.1-8B-Instruct "
            "or Llama-3.1-8B.")
    got = public_reason(text, model="chat", upstream_model="meta-llama/Llama-3.1-8B")
    assert got == "The model `chat` does not exist; try Llama-3.1-8B-Instruct or chat."


def test_a_public_name_is_put_in_as_it_is() -> None:
    assert public_reason("no model up", model=r"a\1", upstream_model="up") == r"no model a\1"
