"""Output controls: check and rewrite an OpenAI request body before it goes upstream.

Each rule names the field in its 400 message; over a cap, a value is clamped or refused
as the model's `over_cap` says. The caller's `model` is replaced by the upstream's name.
Each field asked beyond the controls, refused or clamped, is named in `asked`: the risk
book counts it as a probe of the output layer. A clamped field is also named in `clamped`,
which the caller sees (a response header) and the audit record keeps.
A neutral value asks for nothing and passes as it came, where the controls forbid the field
too: `logit_bias: {}`, `top_logprobs: 0` without `logprobs: true`, `logprobs: false`,
`n: 1`, `best_of: 1`, `echo: false`; it is never named in `asked`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest
from .settings import LlmControls, LlmModel


@dataclass(frozen=True, slots=True)
class Clamped:
    """A field the controls lowered to the caller's band's limit: what was asked, what is sent."""

    field: str
    asked: str
    sent: str

    def describe(self) -> str:
        return f"{self.field} {self.asked} -> {self.sent}"


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
         clamped: list[Clamped], *, minimum: int = 0) -> None:
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
        clamped.append(Clamped(field, str(value), str(cap)))


def _logit_bias(body: dict[str, Any], controls: LlmControls, asked: list[str],
                clamped: list[Clamped]) -> None:
    bias = body.get("logit_bias")
    if bias is None or bias == {} or controls.logit_bias == "allow":
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
    within: dict[str, float] = {}
    over = 0
    for token, value in bias.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"logit_bias[{str(token)[:20]!r}]: must be a number",
                             reason="bad_parameter")
        within[str(token)] = max(-top, min(top, float(value)))
        over += abs(float(value)) > top
    if over:
        asked.append("logit_bias")
        clamped.append(Clamped("logit_bias", f"{over} bias(es) beyond +-{top:g}",
                               f"+-{top:g}"))
    body["logit_bias"] = within


def _logprobs_chat(body: dict[str, Any], controls: LlmControls, asked: list[str],
                   clamped: list[Clamped]) -> None:
    # top_logprobs: 0 without logprobs: true asks for nothing (LangChain and others send it)
    wants = bool(body.get("logprobs")) or body.get("top_logprobs") not in (None, 0)
    if wants and not controls.logprobs:
        asked.append("logprobs")
        raise BadRequest("logprobs: not available for this model", reason="logprobs_refused")
    _cap(body, "top_logprobs", controls.max_top_logprobs, controls, asked, clamped)


def _logprobs_completion(body: dict[str, Any], controls: LlmControls, asked: list[str],
                         clamped: list[Clamped]) -> None:
    if body.get("logprobs") is False:  # no logprobs; a lax server would read false as 0
        del body["logprobs"]
    if body.get("logprobs") is None:  # 0 is not neutral here: the sampled tokens' logprobs
        return
    if not controls.logprobs:
        asked.append("logprobs")
        raise BadRequest("logprobs: not available for this model", reason="logprobs_refused")
    _cap(body, "logprobs", controls.max_top_logprobs, controls, asked, clamped)


def apply_controls(kind: str, body: dict[str, Any], model: LlmModel,
                   controls: LlmControls | None = None,
                   asked: list[str] | None = None,
                   clamped: list[Clamped] | None = None) -> dict[str, Any]:
    """The body to send upstream for a `chat`, `completion` or `embed` call (mutated in place).

    `controls`: the caller's band's (default: the model's base controls). `asked`: gets
    the name of each field asked beyond them (filled before a 400 is raised); `clamped`:
    each field lowered to its cap.
    """
    controls = controls or model.controls
    asked = [] if asked is None else asked
    clamped = [] if clamped is None else clamped
    body["model"] = model.target_model
    if kind == "embed":
        return body
    _logit_bias(body, controls, asked, clamped)
    _cap(body, "n", controls.max_n, controls, asked, clamped, minimum=1)
    if kind == "chat":
        _logprobs_chat(body, controls, asked, clamped)
        token_fields = [f for f in ("max_tokens", "max_completion_tokens")
                        if body.get(f) is not None] or ["max_tokens"]
    else:
        _logprobs_completion(body, controls, asked, clamped)
        _cap(body, "best_of", controls.max_best_of, controls, asked, clamped, minimum=1)
        if body.get("echo") and not controls.echo:
            asked.append("echo")
            raise BadRequest("echo: not allowed for this model", reason="echo_refused")
        token_fields = ["max_tokens"]
    for field in token_fields:
        if body.get(field) is None:
            body[field] = controls.max_tokens
        else:
            _cap(body, field, controls.max_tokens, controls, asked, clamped, minimum=1)
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
