"""LLM output controls and token accounting, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelfence.errors import BadRequest
from modelfence.llm.controls import apply_controls
from modelfence.llm.settings import LlmModel, LlmSettings
from modelfence.llm.usage import UsageTally


def _model(**controls: Any) -> LlmModel:
    return LlmModel(name="m", upstream="http://127.0.0.1:1/v1/", upstream_model="up",
                    controls=controls)


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_defaults_rewrite_model_and_set_max_tokens() -> None:
    model = _model()
    assert model.upstream == "http://127.0.0.1:1/v1"
    body = apply_controls("chat", _chat(), model)
    assert body["model"] == "up" and body["max_tokens"] == 4096


def test_caps_clamp_by_default() -> None:
    body = apply_controls("completion", {"prompt": "x", "n": 9, "best_of": 9,
                                         "max_tokens": 10**6}, _model(max_n=2))
    assert (body["n"], body["best_of"], body["max_tokens"]) == (2, 1, 4096)
    chat = apply_controls("chat", _chat(max_completion_tokens=10**6), _model())
    assert chat["max_completion_tokens"] == 4096 and "max_tokens" not in chat


@pytest.mark.parametrize(("field", "value"), [("n", 2), ("max_tokens", 4097)])
def test_caps_reject_when_configured(field: str, value: int) -> None:
    with pytest.raises(BadRequest, match=field):
        apply_controls("chat", _chat(**{field: value}), _model(over_cap="reject"))


def test_logit_bias_refused_or_clamped() -> None:
    with pytest.raises(BadRequest, match="logit_bias") as err:
        apply_controls("chat", _chat(logit_bias={"1": 5}), _model())
    assert err.value.reason == "logit_bias_refused"
    body = apply_controls("chat", _chat(logit_bias={"1": 100, "2": -100, "3": 1}),
                          _model(logit_bias="clamp", max_logit_bias=2))
    assert body["logit_bias"] == {"1": 2.0, "2": -2.0, "3": 1.0}
    with pytest.raises(BadRequest):
        apply_controls("chat", _chat(logit_bias={"1": "x"}), _model(logit_bias="clamp"))


def test_logprobs_off_and_capped() -> None:
    with pytest.raises(BadRequest, match="logprobs"):
        apply_controls("chat", _chat(logprobs=True), _model())
    with pytest.raises(BadRequest, match="logprobs"):
        apply_controls("completion", {"prompt": "x", "logprobs": 0}, _model())
    body = apply_controls("chat", _chat(logprobs=True, top_logprobs=20),
                          _model(logprobs=True, max_top_logprobs=3))
    assert body["top_logprobs"] == 3
    done = apply_controls("completion", {"prompt": "x", "logprobs": 5},
                          _model(logprobs=True, max_top_logprobs=1))
    assert done["logprobs"] == 1


def test_echo_and_bad_types() -> None:
    with pytest.raises(BadRequest, match="echo"):
        apply_controls("completion", {"prompt": "x", "echo": True}, _model())
    assert apply_controls("completion", {"prompt": "x", "echo": True}, _model(echo=True))
    with pytest.raises(BadRequest, match="n: must be an integer"):
        apply_controls("chat", _chat(n="3"), _model())
    with pytest.raises(BadRequest, match="max_tokens: must be at least 1"):
        apply_controls("chat", _chat(max_tokens=0), _model())


def test_embeddings_only_get_the_model_name() -> None:
    assert apply_controls("embed", {"input": "x", "n": 50}, _model()) == {"input": "x", "n": 50,
                                                                         "model": "up"}


def test_settings_refuse_duplicates_and_bad_urls() -> None:
    with pytest.raises(ValidationError, match="unique"):
        LlmSettings(models=[_model(), _model()])
    with pytest.raises(ValidationError, match="http"):
        LlmModel(name="m", upstream="ftp://x")
    with pytest.raises(ValidationError):
        LlmModel.model_validate({"name": "m", "upstream": "http://x", "extra": 1})


def test_usage_reported_or_estimated() -> None:
    tally = UsageTally("chat", _chat())
    tally.see({"choices": [{"delta": {"content": "abcdefgh"}}]})
    assert tally.result().as_dict() == {"prompt_tokens": 1, "completion_tokens": 2,
                                        "total_tokens": 3, "estimated": True}
    tally.see({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
    assert tally.result().describe() == "tokens prompt=9 completion=4"
    emb = UsageTally("embed", {"input": ["abcd", [1, 2]]})
    assert emb.result().prompt == 3


def test_token_ceiling_counts_every_prompt_and_choice() -> None:
    from modelfence.llm.controls import MAX_TOKEN_COST, token_ceiling

    assert token_ceiling("chat", {"max_tokens": 100, "n": 2}, 10) == 210
    assert token_ceiling("chat", {"max_tokens": 100, "best_of": 50}, 10) == 110  # not chat's
    batch = {"prompt": ["a", "b", "c"], "max_tokens": 100, "n": 2, "best_of": 3}
    assert token_ceiling("completion", batch, 3) == 3 + 100 * 3 * 3
    ids = {"prompt": [1, 2, 3], "max_tokens": 10}  # one prompt given as token ids
    assert token_ceiling("completion", ids, 3) == 13
    token_lists = {"prompt": [[1, 2], [3]], "max_tokens": 10}
    assert token_ceiling("completion", token_lists, 3) == 23
    assert token_ceiling("embed", {"input": ["x"] * 5}, 7) == 7
    assert token_ceiling("chat", {"max_tokens": 2**62, "n": 2**62}, 1) == MAX_TOKEN_COST
    assert token_ceiling("chat", {"max_tokens": "9", "n": True}, 4) == 4  # junk counts 0
