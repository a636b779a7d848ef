"""What identifies a system prompt in an answer, whatever the answer's form.

A thief who gets a prompt translated, paraphrased or encoded loses its wording but keeps what
is distinctive in it: the canary, codes and identifiers, long numbers, quoted strings, the
value after "password"/"code"/"key", rare words. These are the prompt's marks, kept in the
compact folded form of leak_views.py (so spacing, chunking, case and accents do not matter),
with their reversed, ROT13 and leetspeak forms, and every `gram` characters of each prompt
part for runs copied in a disguise.

A strong mark (canary, code, identifier, 5+ digit number, quoted string, cue value) found in
any view is a leak. A weak mark (a rare word, a 3-4 digit number) is ordinary in an honest
answer on the prompt's subject, so in plain text only `weak_needed` distinct ones together are
a leak; in a disguised view (reversed, ROT13, leetspeak, decoded, acrostic) an honest answer
has no reason to hold any, and each counts as strong.

Text the operator marks public (the persona an assistant may tell its users) is cut out of the
prompt first: no mark, span or sentence comes from it, and no mark that also occurs in it.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from .leak_views import compact, fold, leet, rot13

_TOKEN = re.compile(r"[^\W_](?:[\w\-.:/@#]*[^\W_])?")
_QUOTED = re.compile(r"\"([^\"\n]{4,60})\"|“([^”\n]{4,60})”|`([^`\n]{4,60})`|'([^'\n]{4,60})'"
                     r"|«([^»\n]{4,60})»")
_CUES = re.compile(r"(?i)\b(?:password|passphrase|passcode|pass\s*word|code|key|secret|token|"
                   r"pin|pwd|codeword|code\s*word|phrase)s?\b(?:\s+(?:is|are|was|reads|=|:))?"
                   r"[\s:=]*([^\W_][^\s\"'`”»,;]*)")
_YEAR = re.compile(r"(?:19|20)\d\d")
_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ \-][A-Z][a-z]+)+\b")  # proper names of 2+ words
_SUFFIXES = ("s", "es", "ed", "d", "ing", "ly", "er", "ers", "est", "ies", "ied")


@lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    """The shipped common English words (leak_common.txt)."""
    text = (importlib.resources.files("modelfence.llm").joinpath("leak_common.txt")
            .read_text(encoding="utf-8"))
    return frozenset(w for line in text.splitlines() if not line.startswith("#")
                     for w in line.split())


def is_common(word: str, common: frozenset[str]) -> bool:
    if word in common:
        return True
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[:-len(suffix)]
            if stem in common or stem + "e" in common or (suffix == "ies" and stem + "y"
                                                          in common):
                return True
    return False


def _sentence_start(text: str, i: int) -> bool:
    before = text[:i].rstrip()
    return not before or before[-1] in ".!?:;\n"


@dataclass(frozen=True)
class Mark:
    """One distinctive piece of the prompt: `key` in compact folded form."""

    text: str
    key: str
    strong: bool
    kind: str  # canary, code, number, quoted, cue, word


def public_regex(public: Sequence[str]) -> re.Pattern[str] | None:
    parts = [r"\s+".join(re.escape(w) for w in p.split()) for p in public if p.strip()]
    if not parts:
        return None
    return re.compile("|".join(sorted(parts, key=len, reverse=True)), re.IGNORECASE)


def secret_parts(prompt: str, public: Sequence[str]) -> list[str]:
    """The prompt with the public text cut out: the parts between public passages."""
    rx = public_regex(public)
    parts = rx.split(prompt) if rx is not None else [prompt]
    return [p for p in parts if p.strip()]


def _marks_of(part: str, common: frozenset[str]) -> Iterable[Mark]:
    for m in _QUOTED.finditer(part):
        text = next(g for g in m.groups() if g)
        key = compact(fold(text))
        if len(key) >= 6:
            yield Mark(text, key, True, "quoted")
    for m in _CUES.finditer(part):
        text = m.group(1).rstrip(".:")
        key = compact(fold(text))
        if len(key) >= 4 and not (key.isalpha() and is_common(key, common)):
            yield Mark(text, key, True, "cue")
    for m in _NAME.finditer(part):
        words = re.split(r"[ \-]", m.group())
        rare = [w for w in words if not is_common(w.lower(), common)]
        if rare and len(words) <= 4 and not (len(rare) == 1 and rare[0] == words[0]
                                             and _sentence_start(part, m.start())):
            yield Mark(m.group(), compact(fold(m.group())), True, "name")
    for m in _TOKEN.finditer(part):
        text = m.group()
        key = compact(fold(text))
        digits = sum(c.isdigit() for c in key)
        if digits and digits < len(key):
            if len(key) >= 4:
                yield Mark(text, key, True, "code")
            for piece in re.split(r"[\-_.:/@#]", text):  # a code's parts, told one by one
                pk = compact(fold(piece))
                if len(pk) >= 4 and pk != key and not is_common(pk, common):
                    # a code's digits, or its rare word, asked for one at a time: strong
                    # (a name's parts stay weak: an honest answer may greet an Ingrid)
                    strong = len(pk) >= 5 or pk.isdigit()
                    yield Mark(piece, pk, strong, "number" if pk.isdigit() else "code")
        elif digits:
            if len(key) >= 5:
                yield Mark(text, key, True, "number")
            elif len(key) >= 3 and not _YEAR.fullmatch(key):
                yield Mark(text, key, False, "number")
        elif len(key) >= 5 and not is_common(key, common):
            upper = sum(c.isupper() for c in text[1:])
            code_like = len(key) >= 6 and ((upper >= 2 and not text.isupper())
                                           or (any(c in "-_" for c in text) and text.isupper()))
            yield Mark(text, key, code_like, "code" if code_like else "word")


@dataclass
class PromptMarks:
    """The marks of one protected prompt and the views' search patterns over them."""

    marks: list[Mark]
    gram: int = 16
    plain_gram: int = 32
    weak_needed: int = 3
    plain_re: re.Pattern[str] | None = None  # every mark, in plain compact text
    disguised_re: re.Pattern[str] | None = None  # reversed and ROT13 forms, compact text
    compact_re: re.Pattern[str] | None = None  # both of the above in one pass
    leet_re: re.Pattern[str] | None = None  # leet forms (and reversed), leet text
    acrostic_re: re.Pattern[str] | None = None  # letter marks and reversed, acrostics
    words_re: re.Pattern[str] | None = None  # the same, 7+ letters: first letters of words
    shift_re: re.Pattern[str] | None = None  # 6+ characters, 3+ letters: in shifted views
    common: frozenset[str] = frozenset()
    by_form: dict[str, Mark] = field(default_factory=dict)
    prefixes: frozenset[str] = frozenset()  # every prefix of every form (compact and leet)
    strong_keys: tuple[str, ...] = ()  # for parts of a mark at an answer's ends
    strong_prefixes: frozenset[str] = frozenset()  # 4+ characters: a partial acrostic
    part_ends: dict[str, frozenset[int]] = field(default_factory=dict)  # key -> where its
    # words end (ORCHID-7731: 6), so that an answer ending in a whole first word is not cut
    longest: int = 0  # longest form
    plain_grams: frozenset[str] = frozenset()
    twisted_grams: frozenset[str] = frozenset()  # reversed and ROT13 forms, `gram` long
    short_grams: frozenset[str] = frozenset()  # plain, `gram` long: for decoded text
    leet_grams: frozenset[str] = frozenset()

    @classmethod
    def build(cls, prompt: str, *, canary: str | None = None, public: Sequence[str] = (),
              gram: int = 16, plain_gram: int = 32, weak_needed: int = 3) -> PromptMarks:
        common = common_words()
        parts = secret_parts(prompt, public)
        public_key = compact(fold(" ".join(public)))
        found: dict[str, Mark] = {}
        if canary:
            key = compact(fold(canary))
            found[key] = Mark(canary, key, True, "canary")
        for part in parts:
            for mark in _marks_of(part, common):
                old = found.get(mark.key)
                if mark.key in public_key or (old is not None and (old.strong
                                                                   or not mark.strong)):
                    continue
                found[mark.key] = mark
        out = cls(list(found.values()), gram=gram, plain_gram=plain_gram,
                  weak_needed=weak_needed)
        out._patterns()
        keys = [compact(fold(p)) for p in parts]
        out.plain_grams = _grams(keys, plain_gram)
        out.twisted_grams = _grams([f for k in keys for f in (k[::-1], rot13(k))], gram)
        out.short_grams = _grams(keys, gram)
        lk = [leet(fold(p)) for p in parts]
        out.leet_grams = _grams([*lk, *(k[::-1] for k in lk)], plain_gram)
        return out

    def _patterns(self) -> None:
        plain: list[str] = []
        disguised: list[str] = []
        leets: list[str] = []
        letters: list[str] = []
        prefixes: set[str] = set()
        for mark in self.marks:
            key = mark.key
            forms = [key, key[::-1]]
            if not key.isdigit():
                forms.append(rot13(key))
            lk = leet(key)
            for form in (*forms, lk, lk[::-1]):
                self.by_form.setdefault(form, mark)
                prefixes.update(form[:i] for i in range(1, len(form) + 1))
                self.longest = max(self.longest, len(form))
            if mark.strong and len(key) >= 5:
                self.strong_keys += (key,)
                ends, n = set(), 0
                for word in re.split(r"[\W_]+", fold(mark.text)):
                    n += len(word)
                    ends.add(n)
                self.part_ends[key] = frozenset(ends)
                self.strong_prefixes |= {key[:i] for i in range(4, len(key))}
            if key.isdigit():  # numbers are whole: 250 is not in 1250
                plain.append(rf"(?<!\d){key}(?!\d)")
                disguised.append(rf"(?<!\d){key[::-1]}(?!\d)")
                if len(key) >= 5:
                    letters.append(key)
                continue
            plain.append(re.escape(key))
            disguised += [re.escape(f) for f in forms[1:] if len(f) >= 5]
            if len(lk) >= 5:
                leets += [re.escape(lk), re.escape(lk[::-1])]
            if len(key) >= 5:
                letters += [re.escape(key), re.escape(key[::-1])]
        self.prefixes = frozenset(prefixes)
        self.plain_re = _alternation(plain)
        self.disguised_re = _alternation(disguised)
        self.compact_re = _alternation([*plain, *disguised])
        self.leet_re = _alternation(leets)
        self.acrostic_re = _alternation(letters)
        self.words_re = _alternation([f for f in letters if len(f) >= 7])
        self.shift_re = _alternation([re.escape(mk.key) for mk in self.marks
                                      if len(mk.key) >= 6
                                      and sum(c.isalpha() for c in mk.key) >= 3])
        self.common = common_words()

    def mark_of(self, form: str) -> Mark:
        return self.by_form[form]


def _alternation(forms: list[str]) -> re.Pattern[str] | None:
    forms = sorted(set(forms), key=len, reverse=True)
    return re.compile("|".join(forms)) if forms else None


def _grams(keys: Iterable[str], n: int) -> frozenset[str]:
    return frozenset(k[i:i + n] for k in keys for i in range(len(k) - n + 1))
