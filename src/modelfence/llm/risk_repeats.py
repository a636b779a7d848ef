"""Which screener hits are new evidence, and which are an earlier turn screened again.

A chat request carries its conversation: every turn after a flagged message is screened
with that message in it and flagged again. Counted each time, one honest false positive
early in a long conversation became five (the corpus's heavy users, who follow up on
their answers, reached the watched band so), and the allowance for the screeners'
background rate assumes independent hits. A hit counts only when no earlier user message
of the request was itself the newest message of one of the principal's flagged requests.
A multi-turn attacker is then counted once per conversation; a new conversation, a new
key or a completion counts again.

Kept per replica (a conversation whose turns land on different replicas may count twice):
for each principal, the digests of its last `per_principal` flagged messages, in an LRU of
`max_principals`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..stores.recent import recent
from .screening import text_of

_USER = frozenset({"user"})


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest()


def user_turns(kind: str, body: Any) -> list[bytes]:
    """Digests of the user messages of a chat body, oldest first (none for a completion)."""
    if kind != "chat" or not isinstance(body, Mapping):
        return []
    messages = body.get("messages")
    out = []
    for m in messages if isinstance(messages, list) else ():
        if isinstance(m, Mapping) and m.get("role") == "user":
            out.append(_digest(text_of("chat", {"messages": [m]}, roles=_USER)))
    return out


class RepeatedHits:
    """Remembers each principal's flagged messages; says whether a hit is new."""

    def __init__(self, per_principal: int = 16, max_principals: int = 100_000) -> None:
        self._per = per_principal
        self._max = max_principals
        self._flagged: OrderedDict[str, OrderedDict[bytes, None]] = OrderedDict()

    def fresh(self, principal: str, kind: str, body: Any) -> bool:
        """Whether a request of `principal` that the screeners flagged is new evidence
        (call only for flagged requests: it remembers the request's newest message)."""
        turns = user_turns(kind, body)
        if not turns:
            return True
        seen = recent(self._flagged, principal, OrderedDict, self._max)
        repeat = any(t in seen for t in turns[:-1])
        seen[turns[-1]] = None
        seen.move_to_end(turns[-1])
        while len(seen) > self._per:
            seen.popitem(last=False)
        return not repeat
