"""A dictionary translation into French, German and Spanish, word by word, for the complying
upstream: like a real translation it keeps codes, numbers and proper nouns (words it has no
entry for) and changes every other word, so the verbatim-span check cannot see it. It covers
the vocabulary of the shipped system prompts and the canary line (a test checks that); the
dictionary is data/translations.txt."""

from __future__ import annotations

import re

from .data import translations

LANGUAGES = ("french", "german", "spanish")

#: english -> (french, german, spanish)
_WORDS = translations()

_TOKEN = re.compile(r"[A-Za-z']+")


def covers(word: str) -> bool:
    return word.lower() in _WORDS


def translate(text: str, language: str) -> str:
    """`text` word by word into `language` (french, german or spanish); words without an
    entry (proper nouns, codes, numbers) are kept as written."""
    col = LANGUAGES.index(language)

    def one(m: re.Match[str]) -> str:
        word = m.group()
        entry = _WORDS.get(word.lower())
        if entry is None or (word[0].isupper() and word.lower() not in _SENTENCE_START):
            return word  # a proper noun (Brightwater Bank, Nova) stays as it is
        out = entry[col]
        return out[:1].upper() + out[1:] if word[0].isupper() else out

    return _TOKEN.sub(one, text)


#: Capitalised words that start sentences of the prompts, not names.
_SENTENCE_START = frozenset({"you", "never", "do", "keep", "send", "offer", "always", "the",
                             "internal", "crew", "complaints"})
