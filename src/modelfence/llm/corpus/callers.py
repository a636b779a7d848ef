"""What the corpus replays: requests on a simulated clock, grouped into callers.

A `Request` is one API call as the client sends it, minus what depends on earlier answers:
a chat's history is rebuilt by whoever replays it (the harness, or an openai client in the
end-to-end test) from the answers the client actually received. `t` is seconds since
midnight of the simulated day. A `Caller` is one population member: an honest user, a
distiller, one thief's attempt (a fresh key), a prober.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

POPULATIONS = ("honest", "distiller", "thief", "prober")
DAY_S = 86_400.0


@dataclass(frozen=True)
class Request:
    t: float
    caller: str
    principal: str
    tenant: str | None
    model: str  # the deployment: its system prompt goes first in every chat
    text: str  # the user's turn (chat) or the prompt (completion)
    kind: str = "chat"  # "chat" | "completion"
    conversation: str = ""  # requests with the same id carry the earlier turns
    params: tuple[tuple[str, Any], ...] = ()  # max_tokens, temperature, n, logprobs, ...

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.params)

    def body(self, system: str | None, history: Sequence[tuple[str, str]] = ()
             ) -> dict[str, Any]:
        """The OpenAI request body: `system` first, then `history` (user, assistant) pairs,
        then this turn."""
        if self.kind == "completion":
            return {"model": self.model, "prompt": self.text, **self.options}
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        for user, assistant in history:
            messages += [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": self.text})
        return {"model": self.model, "messages": messages, **self.options}


@dataclass(frozen=True)
class Caller:
    """One population member of one half. `target`: alerted within this many requests (the
    issue's target), None where only reported or where no alert is wanted (honest)."""

    name: str
    population: str  # one of POPULATIONS
    family: str  # "natural", "heavy", "templated", "base64", "fast", ...
    half: str
    model: str
    tenant: str | None
    requests: tuple[Request, ...]
    target: int | None = None
    form: str = ""  # a thief's form (its last turn's form for a multi-turn attempt)
    group: str = ""  # honest: "tenant-1", "tenant-10", "tenant-50"
    notes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def principals(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.principal for r in self.requests))


def timeline(callers: Sequence[Caller]) -> list[Request]:
    """Every caller's requests in the order the gateway sees them (time, then caller)."""
    return sorted((r for c in callers for r in c.requests), key=lambda r: (r.t, r.caller))
