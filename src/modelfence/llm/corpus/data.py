"""The corpus's hand-written data, shipped as package files (`data/`) and read with
importlib.resources: honest prompts, distillers' topics and templates, protected system
prompts and thieves' requests, each in a DEV and a TEST file that share nothing, and a
HOLDOUT file written afterwards by someone who had not seen the detectors (never used for
tuning; see `--suite holdout`). The complying upstream's word-by-word dictionary
(translations.txt) is shared by every half."""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from functools import cache

from ...errors import ConfigurationError

HALVES = ("dev", "test", "holdout")


def _read(name: str) -> str:
    return (importlib.resources.files("modelfence.llm.corpus") / "data" / name).read_text(
        encoding="utf-8")


def _half(half: str) -> str:
    if half not in HALVES:
        raise ConfigurationError(f"corpus half {half!r}: use one of {', '.join(HALVES)}")
    return half


def sections(text: str, name: str) -> dict[str, tuple[str, ...]]:
    """`## section` blocks of one-entry-per-line text; `#` lines are comments and a literal
    backslash-n inside a line is a line break."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("## "):
            current = out.setdefault(line[3:].strip(), [])
        elif not line or line.startswith("#"):
            continue
        elif current is None:
            raise ConfigurationError(f"{name} line {n}: an entry before the first section")
        else:
            current.append(line.replace("\\n", "\n"))
    return {k: tuple(v) for k, v in out.items()}


@cache
def honest_prompts(half: str) -> dict[str, tuple[str, ...]]:
    """Section (general, code, self, trigger, followup, long, lang) -> prompts."""
    return sections(_read(f"honest_{_half(half)}.txt"), f"honest_{half}.txt")


@cache
def topics(half: str) -> tuple[tuple[str, str], ...]:
    """(area, topic) pairs of the distillers' taxonomy."""
    out = []
    for line in _read(f"topics_{_half(half)}.txt").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        area, _, rest = line.partition(":")
        out += [(area.strip(), t.strip()) for t in rest.split(";") if t.strip()]
    return tuple(out)


@cache
def distill_templates(half: str) -> dict[str, tuple[str, ...]]:
    """Section (templated, paraphrased, sweep) -> templates with a {topic} slot."""
    return sections(_read(f"distill_{_half(half)}.txt"), f"distill_{half}.txt")


@cache
def attack_requests(half: str) -> dict[str, tuple[str, ...]]:
    """Form (verbatim, translate, base64, ...) -> thieves' requests."""
    return sections(_read(f"attacks_{_half(half)}.txt"), f"attacks_{half}.txt")


@dataclass(frozen=True)
class SystemPrompt:
    """A protected system prompt: the persona sentence (the operator marks it public: the
    assistant may say who it is) and the rest, which holds the secret."""

    name: str
    persona: str
    body: str
    secret: str
    kind: str  # "code" | "name" | "number"

    @property
    def text(self) -> str:
        return f"{self.persona} {self.body}"

    @property
    def fragments(self) -> tuple[str, ...]:
        """The parts of the secret that count as "some of it" (a code's word and its
        digits, a name's first and last name; a number is one part)."""
        if self.kind == "number":
            return (self.secret,)
        return tuple(p for p in self.secret.replace("-", " ").split() if p)


@cache
def system_prompts(half: str) -> tuple[SystemPrompt, ...]:
    docs = json.loads(_read(f"systems_{_half(half)}.json"))
    return tuple(SystemPrompt(**d) for d in docs)


@cache
def translations() -> dict[str, tuple[str, str, str]]:
    """english -> (french, german, spanish): the word-by-word dictionary of `translate`."""
    out: dict[str, tuple[str, str, str]] = {}
    for n, line in enumerate(_read("translations.txt").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 4:
            raise ConfigurationError(f"translations.txt line {n}: want an English word and "
                                     "three translations separated by '|'")
        out[parts[0]] = (parts[1], parts[2], parts[3])
    return out
