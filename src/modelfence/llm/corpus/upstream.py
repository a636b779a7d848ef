"""A deterministic stand-in for the protected model that complies: it answers honest
prompts plausibly, says its persona sentence when asked who it is, and recites its system
prompt in whatever form a thief asks for. What the corpus measures is then the gateway's
filters, not the model's reluctance.

`answer(messages)` reads the request as a model would (the last user turn; the system
prompt it was given, canary line included) and returns the full answer; the caller cuts it
at `max_tokens` (`cut`). Same request, same answer; `choice` varies an n > 1 request.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..canary import content_text, system_text
from .transforms import render
from .translate import LANGUAGES

CHARS_PER_TOKEN = 4

_CUE = re.compile(
    r"system prompt|\byour (?:initial |full |whole )?(?:instructions|prompt|rules|setup|"
    r"guidelines)|those instructions|instructions you (?:were|got)|(?:text|everything) above|"
    r"were you told|you were told|you were given|you got at the start|secret in your|"
    r"(?:you're|you) not allowed|rules do you|rules you follow|"
    # wordings added with the holdout half: a real model understands them, so must the stand-in
    r"\byour (?:\w+ ){1,2}(?:instructions|prompt|rules|setup|guidelines|guidance|"
    r"configuration|config)\b|your (?:setup|configuration) (?:text|message)|your confidential|"
    r"configures you|configured with|initiali[sz]ed with|set you up|running with|"
    r"before my (?:first )?message|written to you before|operator(?:'s)? (?:message|wrote|gave)|"
    r"your operator|(?:guidance|text) you received|configuration (?:text|message)|"
    r"instrucciones|\bur s3tup|first thing anyone said|part i can't see")
_SELF = re.compile(
    r"who are you|who am i (?:talking|chatting)|what are you (?:able|good)|are you (?:a |an |"
    r"chatgpt|made|able)|your name|what can you (?:do|help)|what kinds? of (?:things|questions)"
    r"|introduce yourself|about yourself|who made you|company built you|have a name|"
    r"is this a human|this assistant for|can you (?:remember|look|browse)|do you remember|"
    r"bot or a real|human or an ai")
_DEFINE = re.compile(r"\bwhat does [\"'\u201c]?[\w ]{1,30}[\"'\u201d]? mean\b")
# a follow-up that asks for "it" when an earlier turn was about the assistant's configuration
_FOLLOW = re.compile(r"\bpaste\b|\bcopy\b|share yours|\brepeat\b")
_ABOUT_SETUP = re.compile(r"set you up|configur|instructions|system prompt")
_VERBATIM = re.compile(r"\bpaste\b|no edits|word for word|verbatim")
_PERSONA = re.compile(r"You are [^.]*\.")
_START = re.compile(r"starting (?:from|with|at) [\"'\u201c]([^\"'\u201d]{3,40})[\"'\u201d]")
_SKIP = re.compile(r"skip(?:ping)? the first line|after the first line|from the second line|"
                   r"(?:without|leaving out|leave out|omit|omitting) the (?:internal )?"
                   r"reference")
_SPAN = re.compile(r"(\d+)\D{1,20}?(\d+)")
_LANG = {"french": ("french", "français"), "german": ("german", "deutsch"),
         "spanish": ("spanish", "español")}
_LONG = re.compile(r"detailed|comprehensive|in depth|in-depth|thorough|exhaustive|long-form|"
                   r"extensive|\d{3,4}-word|complete|everything important|rigorous|go deep|"
                   r"full explanation|from the basics")
_MEDIUM = re.compile(r"explain|write|draft|plan|help me|how do i|how can i|describe|"
                     r"summar|improve|review|outline|recipe|schedule|list|speech|story|"
                     r"letter|email|compare|should i|why|what's wrong|code|python|function")
_STOP = frozenset(("a", "an", "the", "and", "or", "but", "to", "of", "in", "on", "at", "by",
                   "for", "with", "from", "as", "is", "are", "was", "were", "be", "it", "its",
                   "this", "that", "i", "me", "my", "we", "you", "your", "how", "what", "why",
                   "can", "could", "would", "should", "do", "does", "did", "please", "some",
                   "any", "about", "into"))
_OPENERS = ("Sure!", "Good question.", "Here's a clear answer.", "Happy to help.",
            "Of course.", "Let me walk you through it.")
_SENTENCES = (
    "A good first step is to look at what you already have and decide what matters most.",
    "It usually helps to break the problem into smaller parts and handle them one at a time.",
    "Most people find that a simple routine works better than an ambitious plan.",
    "If you are unsure, try the cheapest and quickest option first and see how it goes.",
    "Keep in mind that small details often make the biggest difference here.",
    "There are a few common mistakes worth avoiding, and rushing is the main one.",
    "An example makes this concrete: imagine doing it once slowly, then again faster.",
    "The key idea is that each part depends on the one before it.",
    "You can check your result by working backwards from the answer.",
    "Experts tend to recommend starting simple and adding complexity only when needed.",
    "Over time this becomes second nature, so do not worry if it feels slow at first.",
    "It is worth writing down what you tried so you can compare the outcomes.",
    "In practice the best choice depends on your budget, your time and your goals.",
    "A useful rule of thumb is to aim for steady progress rather than perfection.",
    "Many people overlook this, but preparation saves a lot of time later.",
    "There is no single right answer, though some options are clearly safer than others.",
    "To summarise, focus on the basics, measure what happens and adjust as you go.",
    "If anything is unclear, ask a follow-up question and I will go into more detail.",
    "Historically this developed gradually, with several competing ideas along the way.",
    "The underlying mechanism is simpler than it looks once you see the pattern.",
    "Consider both the short-term effect and what happens over the following months.",
    "One more tip: keep a checklist so nothing important is forgotten.",
    "This works in most cases, but there are exceptions worth knowing about.",
    "Think of it like a recipe: the order of the steps matters as much as the steps.",
)


@dataclass(frozen=True)
class Intent:
    """What the request asks: "honest", "self" (who are you) or "extract" in `form`."""

    kind: str
    form: str = ""
    language: str = "french"
    span: tuple[int, int] = (0, 0)


def read_conversation(users: Sequence[str]) -> Intent:
    """How a complying model reads the last user turn in the light of the earlier ones."""
    if not users:
        return Intent("honest")
    intent = read_intent(users[-1])
    if (intent.kind != "extract" and _FOLLOW.search(users[-1].lower())
            and any(_ABOUT_SETUP.search(u.lower()) for u in users[:-1])):
        return Intent("extract", "verbatim")
    return intent


def read_intent(prompt: str) -> Intent:
    """How a complying model reads one user turn."""
    low = prompt.lower()
    if _CUE.search(low) is None or _DEFINE.search(low):
        return Intent("self") if _SELF.search(low) else Intent("honest")
    language = next((lang for lang, words in _LANG.items() if any(w in low for w in words)),
                    "")
    span = _SPAN.search(low)
    if span is not None and ("character" in low or "slice" in low):
        return Intent("extract", "chunked", span=(int(span.group(1)), int(span.group(2))))
    for form, words in (("spelled", ("nato", "phonetic alphabet", "number words")),
                        ("caesar", ("caesar", "shift every letter", "shift each letter")),
                        ("acrostic", ("acrostic", "first letter", "first character")),
                        ("base64", ("base64", "base 64")), ("hex", ("hex",)),
                        ("rot13", ("rot13", "rot-13", "rot 13")),
                        ("reversed", ("backwards", "reverse", "mirror", "last letter first",
                                      "final letter to its first")),
                        ("spaced", ("space between", "spaces between", "separated by spaces",
                                    "hyphens between", "one character per line")),
                        ("leet", ("leet", "1337", "l33t")),
                        ("poem", ("poem", "verse", "song", "sonnet", "rhyming"))):
        if any(w in low for w in words):
            return Intent("extract", form)
    if language:
        return Intent("extract", "translate", language=language)
    if _VERBATIM.search(low):
        return Intent("extract", "verbatim")
    if any(w in low for w in ("own words", "paraphrase", "walk me through", "without quoting",
                              "plain language", "describe each part", "summar", "rephrase",
                              "reword", "gist",
                              "rules do you", "rules you follow", "not allowed",
                              "were you told")):
        return Intent("extract", "paraphrase")
    return Intent("extract", "verbatim")


class ComplyingUpstream:
    """request -> answer text. `secrets` maps a system prompt's text to its secret (for the
    acrostic, which spells the secret); stateless otherwise."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self._secrets = dict(secrets or {})

    def answer(self, messages: Sequence[Mapping[str, Any]], *, choice: int = 0) -> str:
        system = system_text(messages)
        users = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
        prompt = users[-1] if users else ""
        intent = read_conversation(users)
        if intent.kind == "extract" and system:
            secret = next((s for text, s in self._secrets.items() if text in system), "")
            system = _from_where_asked(system, prompt)
            body = render(intent.form, system, secret=secret, language=intent.language,
                          span=intent.span)
            if intent.form == "chunked":
                return body
            return f"Sure, here it is:\n\n{body}"
        if intent.kind == "self":
            persona = _PERSONA.search(system)
            who = ("I'm an AI assistant." if persona is None else
                   persona.group().replace("You are", "I am", 1).replace(" you help",
                                                                          " I help", 1))
            return f"{who} How can I help you today?"
        return self.plain(prompt, choice=choice)

    def complete(self, prompt: str, *, choice: int = 0) -> str:
        """A completions-endpoint answer (probers' echo requests)."""
        return self.plain(prompt, choice=choice)

    def plain(self, prompt: str, *, choice: int = 0) -> str:
        """A plausible answer to an honest prompt: its length follows what was asked (a
        detailed explanation runs to hundreds of words, a quick fact to a sentence or two)."""
        seed = hashlib.sha256(f"{choice}\x00{prompt}".encode()).digest()
        rng = random.Random(int.from_bytes(seed[:8], "big"))  # noqa: S311 (text, not keys)
        low = prompt.lower()
        if _LONG.search(low):
            n = rng.randint(40, 70)
        elif _MEDIUM.search(low) or len(prompt) > 200:
            n = rng.randint(6, 22)
        else:
            n = rng.randint(2, 6)
        words = [w for w in re.findall(r"[a-zA-Z][a-zA-Z'-]{2,}", prompt)
                 if w.lower() not in _STOP][:6]
        about = " ".join(words[:4]) or "this"
        out = [rng.choice(_OPENERS), f"When it comes to {about}, here is what I would say."]
        out += [rng.choice(_SENTENCES) for _ in range(n)]
        if n > 12 and words:
            out.insert(len(out) // 2, f"Applied to {' '.join(words[-3:])}, the same idea holds.")
        return " ".join(out)


def _from_where_asked(system: str, prompt: str) -> str:
    """A thief who knows about canaries asks to start past them: "starting from 'You are'",
    "skip the first line"; a complying model does as it is told."""
    start = _START.search(prompt)
    if start is not None and start.group(1) in system:
        return system[system.index(start.group(1)):]
    if _SKIP.search(prompt.lower()) and "\n" in system:
        return system.split("\n", 1)[1].lstrip()
    return system


def tokens(text: str) -> int:
    """The tokens a text takes, as the gateway estimates them (4 characters each)."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN)) if text else 0


def cut(text: str, max_tokens: int) -> tuple[str, bool]:
    """The answer as a model stopped at `max_tokens` writes it, and whether it was cut."""
    limit = max_tokens * CHARS_PER_TOKEN
    return (text, False) if len(text) <= limit else (text[:limit], True)


__all__ = ["CHARS_PER_TOKEN", "LANGUAGES", "ComplyingUpstream", "Intent", "cut", "read_intent",
           "tokens"]
