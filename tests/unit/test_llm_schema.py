"""The OpenAI request schema (llm/schema.py) and the controls' neutral values and clamps
(llm/controls.py): what LLM clients send passes, what OpenAI would refuse is a 400 naming
the field, and neither a neutral value nor a well-formed request counts as a probe."""

from __future__ import annotations

from typing import Any

import pytest

from modelfence.errors import BadRequest
from modelfence.llm.controls import apply_controls
from modelfence.llm.schema import check_request
from modelfence.llm.settings import LlmModel

HI = [{"role": "user", "content": "hi"}]


def _model(**controls: Any) -> LlmModel:
    return LlmModel.model_validate({"name": "m", "upstream": "http://up/v1",
                                    "controls": controls})


def _refused(kind: str, doc: dict[str, Any], extra: tuple[str, ...] = ()) -> BadRequest:
    with pytest.raises(BadRequest) as err:
        check_request(kind, {"model": "m", **doc}, extra)
    return err.value


# -- the schema ---------------------------------------------------------------------------------

def test_what_clients_send_passes() -> None:
    chat: dict[str, Any] = {
        "model": "m", "stream": False, "temperature": 0.7, "top_p": 1, "n": 1,
        "frequency_penalty": 0, "presence_penalty": 0, "seed": None, "logprobs": None,
        "max_tokens": 256, "logit_bias": {}, "stop": ["\nObservation"], "user": "u",
        "stream_options": {"include_usage": True}, "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto", "parallel_tool_calls": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]}
    check_request("chat", chat)
    assert "seed" not in chat and "logprobs" not in chat  # nulls: OpenAI's "not given"
    completion: dict[str, Any] = {"model": "m", "prompt": ["hello"], "logprobs": None,
                                  "seed": None, "n": 1, "max_tokens": 256, "echo": False,
                                  "best_of": 1, "suffix": None}
    check_request("completion", completion)
    assert completion == {"model": "m", "prompt": ["hello"], "n": 1, "max_tokens": 256,
                          "echo": False, "best_of": 1}
    for prompt in ("", "x", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        check_request("completion", {"model": "m", "prompt": prompt})
    for value in ("x", ["a"], [1, 2], [[1], [2, 3]]):
        check_request("embed", {"model": "m", "input": value, "encoding_format": "float",
                                "dimensions": 8})


@pytest.mark.parametrize(("kind", "doc", "field"), [
    ("chat", {}, "messages: required"),
    ("chat", {"messages": []}, "messages: must be a non-empty list"),
    ("chat", {"messages": "hi"}, "messages: must be a non-empty list"),
    ("chat", {"messages": ["hi"]}, "messages[0]: must be an object"),
    ("chat", {"messages": [{"content": "hi"}]}, "messages[0].role: must be one of"),
    ("chat", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ("chat", {"messages": [{"role": "user"}]}, "messages[0].content: required"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content: must"),
    ("chat", {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages[0].content[0]: must be an object with a string 'type'"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages[0].content[0].text"),
    ("chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ("chat", {"messages": HI, "temperature": 3}, "temperature: must be between 0 and 2"),
    ("chat", {"messages": HI, "temperature": "hot"}, "temperature: must be a number"),
    ("chat", {"messages": HI, "top_p": 1.5}, "top_p: must be between 0 and 1"),
    ("chat", {"messages": HI, "presence_penalty": -3}, "presence_penalty"),
    ("chat", {"messages": HI, "n": 2.5}, "n: must be an integer"),
    ("chat", {"messages": HI, "n": True}, "n: must be an integer"),
    ("chat", {"messages": HI, "stream": "yes"}, "stream: must be true or false"),
    ("chat", {"messages": HI, "logprobs": 1}, "logprobs: must be true or false"),
    ("chat", {"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop: must be"),
    ("chat", {"messages": HI, "stop": [1]}, "stop: must be"),
    ("chat", {"messages": HI, "logit_bias": []}, "logit_bias: must be an object"),
    ("chat", {"messages": HI, "logit_bias": {"1": "x"}}, "logit_bias['1']: must be a number"),
    ("chat", {"messages": HI, "tools": [1]}, "tools[0]: must be an object"),
    ("completion", {}, "prompt: required"),
    ("completion", {"prompt": []}, "prompt: must be"),
    ("completion", {"prompt": [1, "a"]}, "prompt: must be"),
    ("completion", {"prompt": "x", "logprobs": True}, "logprobs: must be an integer"),
    ("completion", {"prompt": "x", "echo": 1}, "echo: must be true or false"),
    ("embed", {}, "input: required"),
    ("embed", {"input": ""}, "input: must not be empty"),
    ("embed", {"input": [[]]}, "input: must be"),
    ("embed", {"input": "x", "encoding_format": "int8"}, "encoding_format: must be one of"),
    ("embed", {"input": "x", "dimensions": 0}, "dimensions: must be at least 1"),
])
def test_what_openai_refuses_is_a_400_naming_the_field(kind: str, doc: dict[str, Any],
                                                       field: str) -> None:
    err = _refused(kind, doc)
    assert str(err).startswith(field), str(err)
    assert err.status == 400 and err.reason == "bad_parameter"


def test_unknown_fields_are_refused_unless_the_model_lists_them() -> None:
    err = _refused("chat", {"messages": HI, "chat_template": "{{ x }}", "prompt_logprobs": 5})
    assert err.reason == "unknown_parameter"
    assert str(err) == ("unrecognized request argument supplied: 'chat_template', "
                        "'prompt_logprobs'")
    many = _refused("completion", {"prompt": "x", **{f"f{i}": 1 for i in range(5)}})
    assert str(many).endswith("and 2 more")
    # a chat field is no completion field, nor the other way round
    assert _refused("completion", {"prompt": "x", "messages": HI}).reason == "unknown_parameter"
    assert _refused("embed", {"input": "x", "n": 2}).reason == "unknown_parameter"
    doc = {"model": "m", "messages": HI, "top_k": 5, "min_p": 0.1}
    check_request("chat", doc, ("top_k", "min_p"))
    assert doc["top_k"] == 5 and doc["min_p"] == 0.1  # passed on as sent
    assert _refused("chat", {"messages": HI, "top_k": 5}, ("min_p",)).reason == (
        "unknown_parameter")


def test_a_completion_logprobs_false_is_dropped_not_sent_as_zero() -> None:
    doc: dict[str, Any] = {"model": "m", "prompt": "x", "logprobs": False}
    check_request("completion", doc)
    assert "logprobs" not in doc
    chat: dict[str, Any] = {"model": "m", "messages": HI, "logprobs": False}
    check_request("chat", chat)
    assert chat["logprobs"] is False  # a chat's boolean: passed as sent


def test_extra_fields_config_takes_names_only() -> None:
    from pydantic import ValidationError

    model = LlmModel.model_validate({"name": "m", "upstream": "http://up/v1",
                                     "extra_fields": ["top_k", "min_p"]})
    assert model.extra_fields == ["top_k", "min_p"]
    with pytest.raises(ValidationError):
        LlmModel.model_validate({"name": "m", "upstream": "http://up/v1",
                                 "extra_fields": ["a b"]})


# -- neutral values and clamps in the controls --------------------------------------------------

NEUTRAL_CHAT = [{"logit_bias": {}}, {"top_logprobs": 0}, {"logprobs": False},
                {"logprobs": False, "top_logprobs": 0}, {"n": 1}]
NEUTRAL_COMPLETION = [{"logit_bias": {}}, {"n": 1}, {"best_of": 1}, {"echo": False},
                      {"logprobs": False}]


@pytest.mark.parametrize("fields", NEUTRAL_CHAT)
def test_neutral_chat_values_pass_where_the_controls_forbid_the_field(
        fields: dict[str, Any]) -> None:
    asked: list[str] = []
    clamped: list[Any] = []
    body = apply_controls("chat", {"messages": HI, **fields}, _model(), asked=asked,
                          clamped=clamped)
    assert asked == [] and clamped == []  # no probe for the risk book, nothing to announce
    for key, value in fields.items():
        assert body[key] == value


@pytest.mark.parametrize("fields", NEUTRAL_COMPLETION)
def test_neutral_completion_values_pass(fields: dict[str, Any]) -> None:
    asked: list[str] = []
    body = apply_controls("completion", {"prompt": "x", **fields}, _model(), asked=asked)
    assert asked == []
    assert "logprobs" not in body  # false: dropped, never sent as 0


@pytest.mark.parametrize(("kind", "fields"), [
    ("chat", {"logit_bias": {"1": 0}}),
    ("chat", {"top_logprobs": 1}),
    ("chat", {"logprobs": True, "top_logprobs": 0}),  # the sampled tokens' logprobs
    ("completion", {"logprobs": 0}),  # the same, in the completions API
    ("completion", {"echo": True}),
])
def test_values_that_ask_for_something_are_still_refused(kind: str,
                                                         fields: dict[str, Any]) -> None:
    asked: list[str] = []
    base: dict[str, Any] = {"messages": HI} if kind == "chat" else {"prompt": "x"}
    with pytest.raises(BadRequest):
        apply_controls(kind, {**base, **fields}, _model(), asked=asked)
    assert asked  # a probe, for the risk book


def test_clamped_fields_are_named() -> None:
    clamped: list[Any] = []
    asked: list[str] = []
    body = apply_controls("completion", {"prompt": "x", "n": 4, "best_of": 9,
                                         "max_tokens": 10**6, "logit_bias": {"1": 50, "2": 1}},
                          _model(max_n=2, max_best_of=3, logit_bias="clamp"),
                          asked=asked, clamped=clamped)
    assert (body["n"], body["best_of"], body["max_tokens"]) == (2, 3, 4096)
    assert [c.field for c in clamped] == ["logit_bias", "n", "best_of", "max_tokens"]
    assert [c.describe() for c in clamped] == [
        "logit_bias 1 bias(es) beyond +-5 -> +-5", "n 4 -> 2", "best_of 9 -> 3",
        "max_tokens 1000000 -> 4096"]
    assert asked == ["logit_bias", "n", "best_of", "max_tokens"]  # the book still counts them
    within: list[Any] = []
    apply_controls("chat", {"messages": HI, "n": 1, "max_tokens": 10}, _model(),
                   clamped=within)
    assert within == []  # a default max_tokens filled in is no clamp
