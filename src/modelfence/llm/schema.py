"""The OpenAI request schema, checked before a request reaches screening, policy or upstream.

A request the OpenAI API would refuse is refused here with 400 naming the field, so the
upstream never sees it (a chat without `messages` used to be forwarded). Required fields:
a chat's `messages` (a non-empty list of messages, each with a valid role), a completion's
`prompt`, an embedding's `input`; each known field has its type checked, and the sampling
numbers their OpenAI ranges. The caps on `n`, `best_of`, the token counts and the logprob
counts are the output controls' (controls.py): only their types are checked here.

Unknown top-level fields are refused, as OpenAI refuses them ("Unrecognized request
argument"): a field the gateway does not know is a field no control looks at, and servers
behind it take extras that reach past the controls (vLLM's `prompt_logprobs`,
`chat_template`, `allowed_token_ids`). A model's `extra_fields` names the ones its callers
may send (vLLM's `top_k`, `min_p`, ...); they go upstream as sent.
A top-level `null` is OpenAI's "not given": it is dropped before anything reads the body.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from ..errors import BadRequest

Check = Callable[[str, Any], None]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
#: Roles whose message may have no content (an assistant's tool calls, a function's result).
CONTENT_OPTIONAL = frozenset({"assistant", "function"})
MAX_STOP = 4  # OpenAI's limit on stop sequences


def _bad(field: str, what: str) -> BadRequest:
    return BadRequest(f"{field}: {what}", reason="bad_parameter")


def _string(field: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _bad(field, "must be a string")


def _boolean(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(field, "must be true or false")


def _integer(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, "must be an integer")


def _object(field: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad(field, "must be an object")


def _string_or_object(field: str, value: Any) -> None:
    if not isinstance(value, str | dict):
        raise _bad(field, "must be a string or an object")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _number(low: float, high: float) -> Check:
    def check(field: str, value: Any) -> None:
        if not _is_number(value):
            raise _bad(field, "must be a number")
        if not low <= value <= high:
            raise _bad(field, f"must be between {low:g} and {high:g}")
    return check


def _positive_integer(field: str, value: Any) -> None:
    _integer(field, value)
    if value < 1:
        raise _bad(field, "must be at least 1")


def _list_of(item: Check, what: str) -> Check:
    def check(field: str, value: Any) -> None:
        if not isinstance(value, list):
            raise _bad(field, f"must be a list of {what}")
        for i, v in enumerate(value):
            item(f"{field}[{i}]", v)
    return check


def _one_of(*choices: str) -> Check:
    def check(field: str, value: Any) -> None:
        if value not in choices:
            raise _bad(field, f"must be one of {', '.join(repr(c) for c in choices)}")
    return check


def _logit_bias(field: str, value: Any) -> None:
    _object(field, value)
    for token, bias in value.items():
        if not _is_number(bias):
            raise _bad(f"{field}[{str(token)[:20]!r}]", "must be a number")


def _stop(field: str, value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or len(value) > MAX_STOP or not all(
            isinstance(s, str) for s in value):
        raise _bad(field, f"must be a string or a list of up to {MAX_STOP} strings")


def _tokens_or_texts(field: str, value: Any, *, empty_text: bool) -> None:
    """A string, a non-empty list of strings, of token ids, or of token id lists."""
    if isinstance(value, str):
        if not value and not empty_text:
            raise _bad(field, "must not be empty")
        return
    what = "a string or a non-empty list of strings, of token ids or of token id lists"
    if not isinstance(value, list) or not value:
        raise _bad(field, f"must be {what}")
    def ids(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in v)
    if not (all(isinstance(v, str) for v in value) or ids(value)
            or all(ids(v) for v in value)):
        raise _bad(field, f"must be {what}")


def _prompt(field: str, value: Any) -> None:
    _tokens_or_texts(field, value, empty_text=True)


def _input(field: str, value: Any) -> None:
    _tokens_or_texts(field, value, empty_text=False)


def _content(field: str, value: Any) -> None:
    """A message's content: text, or a list of typed parts (text, image_url, ...)."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _bad(field, "must be a string or a list of content parts")
    for i, part in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(where, "must be an object with a string 'type'")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _bad(f"{where}.text", "must be a string")


def _message(field: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad(field, "must be an object with a role and content")
    role = value.get("role")
    if role not in ROLES:
        raise _bad(f"{field}.role", f"must be one of {', '.join(ROLES)}")
    content = value.get("content")
    if content is None:
        if role not in CONTENT_OPTIONAL:
            raise _bad(f"{field}.content", f"required in a {role} message")
    else:
        _content(f"{field}.content", content)
    for key, check in _MESSAGE_FIELDS.items():
        if value.get(key) is not None:
            check(f"{field}.{key}", value[key])
    if role == "tool" and not isinstance(value.get("tool_call_id"), str):
        raise _bad(f"{field}.tool_call_id", "required in a tool message (a string)")


_MESSAGE_FIELDS: dict[str, Check] = {
    "name": _string, "tool_call_id": _string, "refusal": _string,
    "tool_calls": _list_of(_object, "objects"), "function_call": _object,
}


def _messages(field: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise _bad(field, "must be a non-empty list of messages")
    for i, message in enumerate(value):
        _message(f"{field}[{i}]", message)


_SAMPLING: dict[str, Check] = {
    "model": _string, "stream": _boolean, "stream_options": _object, "user": _string,
    "temperature": _number(0, 2), "top_p": _number(0, 1),
    "frequency_penalty": _number(-2, 2), "presence_penalty": _number(-2, 2),
    "n": _integer, "max_tokens": _integer, "seed": _integer, "stop": _stop,
    "logit_bias": _logit_bias,
}

#: Each kind's fields (OpenAI's API reference); the required ones in REQUIRED.
FIELDS: dict[str, dict[str, Check]] = {
    "chat": {
        **_SAMPLING, "messages": _messages, "logprobs": _boolean, "top_logprobs": _integer,
        "max_completion_tokens": _integer, "response_format": _object,
        "tools": _list_of(_object, "objects"), "tool_choice": _string_or_object,
        "parallel_tool_calls": _boolean, "functions": _list_of(_object, "objects"),
        "function_call": _string_or_object, "metadata": _object, "store": _boolean,
        "service_tier": _string, "modalities": _list_of(_string, "strings"),
        "audio": _object, "prediction": _object, "reasoning_effort": _string,
        "verbosity": _string, "web_search_options": _object, "prompt_cache_key": _string,
        "safety_identifier": _string,
    },
    "completion": {
        **_SAMPLING, "prompt": _prompt, "suffix": _string, "echo": _boolean,
        "best_of": _integer, "logprobs": _integer,
    },
    "embed": {
        "model": _string, "input": _input, "user": _string,
        "encoding_format": _one_of("float", "base64"), "dimensions": _positive_integer,
    },
}
REQUIRED = {"chat": ("messages",), "completion": ("prompt",), "embed": ("input",)}


def check_request(kind: str, doc: dict[str, Any], extra_fields: Collection[str] = ()) -> None:
    """Refuse (400, naming the field) a `chat`, `completion` or `embed` request the OpenAI
    API would refuse; drop its top-level nulls and a completion's `logprobs: false` (no
    logprobs: a lax server would read it as 0, the sampled tokens' logprobs)."""
    for key in [k for k, v in doc.items() if v is None]:
        del doc[key]
    if kind == "completion" and doc.get("logprobs") is False:
        del doc["logprobs"]
    known = FIELDS[kind]
    unknown = sorted(k for k in doc if k not in known and k not in extra_fields)
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise BadRequest(f"unrecognized request argument supplied: {names}{more}",
                         reason="unknown_parameter")
    for field in REQUIRED[kind]:
        if field not in doc:
            raise BadRequest(f"{field}: required", reason="bad_parameter")
    for key, value in doc.items():
        check = known.get(key)
        if check is not None:
            check(key, value)
