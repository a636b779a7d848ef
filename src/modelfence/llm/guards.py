"""The LLM model lookup and request body guards, and what they put on the Call."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from ..errors import BadRequest, NotFound
from ..kernel.body import read_bounded
from ..kernel.chain import Guard
from .call import LlmCall, LlmEntry, LlmExchange, exchange_of
from .controls import apply_controls, token_ceiling
from .schema import check_request
from .usage import UsageTally, estimate, prompt_chars

#: No OpenAI request nests deeper than a few levels; a hostile one could overflow the
#: recursion of the usage estimate or the JSON encoder.
MAX_DEPTH = 32


def _depth_over(doc: Any, limit: int) -> bool:
    """Whether `doc` nests containers deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in children if isinstance(v, dict | list))
    return False


#: The route's action (Cedar) → the model kind that serves it.
KIND_OF_ACTION = {"chat": "chat", "completion": "completion", "embed": "embed"}


class LlmModelGuard(Guard[LlmCall]):
    """Resolve the LLM named in the body (or 404); after identity, like `ModelLookupGuard`.

    The model name comes from the JSON body, so this guard reads the body first
    (bounded) and checks it against the OpenAI schema (schema.py) once the model is known,
    so screening, policy and the upstream only see a well-formed request; the controls are
    applied later, after policy, by `LlmBodyGuard`.
    """

    name: ClassVar[str] = "llm_model"
    requires: ClassVar[frozenset[str]] = frozenset({"principal"})
    provides: ClassVar[frozenset[str]] = frozenset({"model", "body", "exchange"})

    def __init__(self, models: dict[str, LlmEntry], max_body_bytes: int) -> None:
        self._models = models
        self._max = max_body_bytes

    async def on_request(self, call: LlmCall) -> None:
        try:
            call.body = await read_bounded(call.request, self._max)
        except BadRequest as exc:
            if "empty" not in str(exc):
                raise
            raise BadRequest("body: empty; send the request as a JSON object",
                             reason="bad_json") from None
        try:
            doc = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            raise BadRequest("body: not valid JSON", reason="bad_json") from None
        if not isinstance(doc, dict):
            raise BadRequest("body: must be a JSON object", reason="bad_json")
        if _depth_over(doc, MAX_DEPTH):
            raise BadRequest(f"body: nested deeper than {MAX_DEPTH} levels",
                             reason="bad_json")
        name = doc.get("model")
        if not isinstance(name, str) or not name:
            raise BadRequest("model: required (a string)", reason="bad_parameter")
        call.model_name = name[:128]
        entry = self._models.get(name)
        if entry is None or KIND_OF_ACTION[call.action] not in entry.settings.kinds:
            raise NotFound(f"unknown model {name[:128]!r}", reason="unknown_model")
        check_request(KIND_OF_ACTION[call.action], doc, entry.settings.extra_fields)
        call.model = entry
        call.exchange = LlmExchange(entry, doc)


#: 400 reasons that mean a caller asked for more of the output layer than it may have (the
#: fields are named in `LlmExchange.asked`, refused or clamped alike).
PROBE_REASONS = frozenset({"logprobs_refused", "logit_bias_refused", "echo_refused",
                           "over_cap"})


class LlmBodyGuard(Guard[LlmCall]):
    """Apply the output controls of the caller's band to the request (400 names the field).

    The band follows the caller's risk, or a policy's ``@shaping("band")`` pin, never below
    an operator's pin (`call.band_floor`); it is named in the audit record, as is each field
    clamped to its limit (which the caller also sees, in the routes' `X-Modelfence-Clamped`
    header). The most tokens the request can use goes on the Call for token budgets.
    """

    name: ClassVar[str] = "llm_body"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "exchange",
                                                    "decision"})
    provides: ClassVar[frozenset[str]] = frozenset({"controls", "token_cost"})

    async def on_request(self, call: LlmCall) -> None:
        ex = exchange_of(call)
        body = ex.request
        kind = KIND_OF_ACTION[call.action]
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("stream: must be true or false", reason="bad_parameter")
        if kind == "embed" and stream:
            raise BadRequest("stream: embeddings do not stream", reason="bad_parameter")
        ex.stream = stream
        band, call.controls = ex.entry.settings.controls_for(call.risk, call.pinned_bands,
                                                             call.band_floor)
        if ex.entry.settings.bands:
            call.shaping_band = band
        apply_controls(kind, body, ex.entry.settings, call.controls, ex.asked, ex.clamped)
        if ex.clamped:
            call.note(self.name, "note", "clamped to the band's limits: "
                      + ", ".join(c.describe() for c in ex.clamped))
        ex.tally = UsageTally(kind, body)
        call.token_cost = token_ceiling(kind, body, estimate(prompt_chars(kind, body)))
        if stream:
            options = body.get("stream_options")
            if options is not None and not isinstance(options, dict):
                raise BadRequest("stream_options: must be an object", reason="bad_parameter")
            options = dict(options or {})
            ex.client_wants_usage = bool(options.get("include_usage"))
            options["include_usage"] = True
            body["stream_options"] = options
