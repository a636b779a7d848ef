"""The LLM `Call`: an OpenAI-compatible call, with its model entry and its exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..kernel.call import Call
from .settings import LlmControls, LlmModel
from .usage import TokenUsage, UsageTally

if TYPE_CHECKING:
    from .canary import LeakPolicy
    from .controls import Clamped
    from .leak_filter import LeakFilter
    from .noise import LogprobNoise


@dataclass(slots=True)
class LlmEntry:
    """A served LLM: what the shared guards read of a model (`name`, `settings.attributes`)."""

    settings: LlmModel
    refused: str | None = None

    @property
    def name(self) -> str:
        return self.settings.name


@dataclass(slots=True)
class LlmExchange:
    """The LLM part of a call: the request sent upstream, the answer and the tokens used."""

    entry: LlmEntry
    request: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    client_wants_usage: bool = False
    tally: UsageTally | None = None
    usage: TokenUsage | None = None
    answer: dict[str, Any] | None = None  # a whole (not streamed) answer, for output guards
    cancelled: bool = False
    leaks: LeakPolicy | None = None  # the leak policy of a canary-protected chat
    filters: dict[int, LeakFilter] = field(default_factory=dict)  # per choice of a stream
    leaked: bool = False  # an answer would have leaked the system prompt (blocked/redacted)
    ended: bool = False  # a stream's end was handled (upstream closed, call completed)
    noise: LogprobNoise | None = None  # a stream's logprob noise, when its band noises them
    noise_offsets: dict[Any, int] = field(default_factory=dict)  # its running positions
    asked: list[str] = field(default_factory=list)  # fields asked beyond the band (risk)
    clamped: list[Clamped] = field(default_factory=list)  # fields lowered to the band's caps


@dataclass(slots=True)
class LlmCall(Call):
    """A call on the OpenAI-compatible API (chat, completions, embeddings, model list)."""

    model: LlmEntry | None = None
    exchange: LlmExchange | None = None  # filled with the model, by the LLM model lookup
    controls: LlmControls | None = None  # the caller's band's, once the request is checked

    def decoded_request(self) -> Any:
        """The JSON request as the caller sent it, once it was checked (the exchange's copy
        is changed later: clamped fields, a canary in the system prompt)."""
        return None if self.exchange is None or not self.body else orjson.loads(self.body)


def exchange_of(call: LlmCall) -> LlmExchange:
    """The call's exchange, for guards that run after the model lookup (which fills it)."""
    assert call.exchange is not None
    return call.exchange
