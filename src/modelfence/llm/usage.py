"""Token accounting: the upstream's `usage`, or an estimate (characters / 4) marked as such."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class TokenUsage:
    prompt: int = 0
    completion: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.total, "estimated": self.estimated}

    def describe(self) -> str:
        est = " (estimated)" if self.estimated else ""
        return f"tokens prompt={self.prompt} completion={self.completion}{est}"


def estimate(chars: int) -> int:
    return (chars + 3) // 4


def _text_chars(value: Any) -> int:
    """Characters of text in a prompt, message content, or embedding input (any nesting)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return _text_chars(value.get("content")) + _text_chars(value.get("text"))
    if isinstance(value, int):
        return 4  # a token id
    return 0


def prompt_chars(kind: str, body: dict[str, Any]) -> int:
    field = {"chat": "messages", "completion": "prompt", "embed": "input"}[kind]
    return _text_chars(body.get(field))


def choice_chars(choices: Any) -> int:
    """Characters of generated text in `choices` (a response or a stream chunk)."""
    if not isinstance(choices, list):
        return 0
    total = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        total += _text_chars(choice.get("text"))
        for key in ("message", "delta"):
            part = choice.get(key)
            if isinstance(part, dict):
                total += _text_chars(part.get("content"))
    return total


def from_upstream(doc: Any) -> TokenUsage | None:
    """The upstream's `usage` object, if it has a usable one."""
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return TokenUsage(max(prompt, 0), max(completion, 0))


class UsageTally:
    """Collects usage for one call: the upstream's numbers when given, else an estimate."""

    def __init__(self, kind: str, body: dict[str, Any]) -> None:
        self._prompt_chars = prompt_chars(kind, body)
        self._completion_chars = 0
        self.reported: TokenUsage | None = None

    def see(self, doc: Any) -> None:
        """Fold in a response document or one stream chunk."""
        got = from_upstream(doc)
        if got is not None:
            self.reported = got
        if isinstance(doc, dict):
            self._completion_chars += choice_chars(doc.get("choices"))

    def result(self) -> TokenUsage:
        if self.reported is not None:
            return self.reported
        return TokenUsage(estimate(self._prompt_chars), estimate(self._completion_chars),
                          estimated=True)
