"""Heuristic prompt screening: text normalisation and the phrase rules.

The cheap detector, run first on every screened prompt: `normalise` resolves the usual
obfuscations (NFKC, case folding, zero-width and tag characters, Cyrillic/Greek look-alikes,
markdown emphasis, whitespace), then one regex pass over rules that a word-set prefilter
skips when their words are absent; tens of microseconds for a typical prompt. Kept apart from
the composition in `screening` because the rule table is most of its size and changes on its
own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from .screening_base import Screener, Verdict, benign
from .screening_settings import Label

_QUOTE = 40  # characters of matched text a heuristic reason may quote


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

