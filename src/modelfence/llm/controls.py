"""Output controls: check and rewrite an OpenAI request body before it goes upstream.

Each rule names the field in its 400 message; over a cap, a value is clamped or refused
as the model's `over_cap` says. The caller's `model` is replaced by the upstream's name.
Each field asked beyond the controls, refused or clamped, is named in `asked`: the risk
book counts it as a probe of the output layer (clamping hides it from the caller, not
from the book).
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest
from .settings import LlmControls, LlmModel


def _number(body: dict[str, Any], field: str, *, integer: bool = True) -> float | int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"{field}: must be {kind}", reason="bad_parameter")
    return value


def _cap(body: dict[str, Any], field: str, cap: int, controls: LlmControls, asked: list[str],
         *, minimum: int = 0) -> None:
    value = _number(body, field)
    if value is None:
        return
    if value < minimum:
        raise BadRequest(f"{field}: must be at least {minimum}", reason="bad_parameter")
    if value > cap:
        asked.append(field)
        if controls.over_cap == "reject":
            raise BadRequest(f"{field}: {value} is over this model's limit of {cap}",
                             reason="over_cap")
        body[field] = cap


def _logit_bias(body: dict[str, Any], controls: LlmControls, asked: list[str]) -> None:
    bias = body.get("logit_bias")
    if bias is None or controls.logit_bias == "allow":
        return
    if controls.logit_bias == "refuse":
        asked.append("logit_bias")
        raise BadRequest("logit_bias: not allowed for this model", reason="logit_bias_refused")
    if not isinstance(bias, dict):
        raise BadRequest("logit_bias: must be an object of token id to bias",
                         reason="bad_parameter")
    if len(bias) > controls.max_logit_bias_entries:
        asked.append("logit_bias")
        raise BadRequest(f"logit_bias: over {controls.max_logit_bias_entries} entries",
                         reason="over_cap")
    top = controls.max_logit_bias
    clamped: dict[str, float] = {}
    for token, value in bias.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"logit_bias[{str(token)[:20]!r}]: must be a number",
                             reason="bad_parameter")
        clamped[str(token)] = max(-top, min(top, float(value)))
        if abs(float(value)) > top and "logit_bias" not in asked:
            asked.append("logit_bias")
    body["logit_bias"] = clamped


def _logprobs_chat(body: dict[str, Any], controls: LlmControls, asked: list[str]) -> None:
    wants = bool(body.get("logprobs")) or body.get("top_logprobs") is not None
    if wants and not controls.logprobs:
        asked.append("logprobs")
        raise BadRequest("logprobs: not available for this model", reason="logprobs_refused")
    _cap(body, "top_logprobs", controls.max_top_logprobs, controls, asked)


def _logprobs_completion(body: dict[str, Any], controls: LlmControls,
                         asked: list[str]) -> None:
    if body.get("logprobs") is None:
        return
    if not controls.logprobs:
        asked.append("logprobs")
        raise BadRequest("logprobs: not available for this model", reason="logprobs_refused")
    _cap(body, "logprobs", controls.max_top_logprobs, controls, asked)


def apply_controls(kind: str, body: dict[str, Any], model: LlmModel,
                   controls: LlmControls | None = None,
                   asked: list[str] | None = None) -> dict[str, Any]:
    """The body to send upstream for a `chat`, `completion` or `embed` call (mutated in place).

    `controls`: the caller's band's (default: the model's base controls). `asked`: gets
    the name of each field asked beyond them (filled before a 400 is raised).
    """
    controls = controls or model.controls
    asked = [] if asked is None else asked
    body["model"] = model.target_model
    if kind == "embed":
        return body
    _logit_bias(body, controls, asked)
    _cap(body, "n", controls.max_n, controls, asked, minimum=1)
    if kind == "chat":
        _logprobs_chat(body, controls, asked)
        token_fields = [f for f in ("max_tokens", "max_completion_tokens")
                        if body.get(f) is not None] or ["max_tokens"]
    else:
        _logprobs_completion(body, controls, asked)
        _cap(body, "best_of", controls.max_best_of, controls, asked, minimum=1)
        if body.get("echo") and not controls.echo:
            asked.append("echo")
            raise BadRequest("echo: not allowed for this model", reason="echo_refused")
        token_fields = ["max_tokens"]
    for field in token_fields:
        if body.get(field) is None:
            body[field] = controls.max_tokens
        else:
            _cap(body, field, controls.max_tokens, controls, asked, minimum=1)
    return body


#: Far above any real request; keeps a hostile one inside the stores' 64-bit integers.
MAX_TOKEN_COST = 2**40


def token_ceiling(kind: str, body: dict[str, Any], prompt_tokens: int) -> int:
    """The most tokens a checked request can use: its prompt and every choice's cap.

    Token budgets reserve this before the upstream call and settle to the real usage after.
    """
    if kind == "embed":
        return prompt_tokens
    def whole(field: str) -> int:
        value = body.get(field)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    cap = max(whole("max_tokens"), whole("max_completion_tokens"))
    n = whole("n")
    best_of = whole("best_of") if kind == "completion" else 0
    prompt = body.get("prompt")
    # completions take a batch: a list of prompts (strings or token lists), each answered
    prompts = (len(prompt) if kind == "completion" and isinstance(prompt, list) and prompt
               and not all(isinstance(p, int) for p in prompt) else 1)
    return min(prompt_tokens + cap * max(n, best_of, 1) * prompts, MAX_TOKEN_COST)
