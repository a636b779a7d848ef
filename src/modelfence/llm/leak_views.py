"""Decoded views of an answer: the forms a system prompt's secret takes when a thief asks the
model to disguise it.

A thief who cannot get the prompt verbatim asks for it spaced out, in leetspeak, reversed,
ROT13, base64 or hex, one letter per line, or translated. Each view undoes one family of
disguises so that the prompt's marks (leak_marks.py) can be looked for with plain substring
search: `fold` (NFKD, diacritics dropped, casefold, look-alike letters of Cyrillic and Greek
mapped to Latin) and `compact` (letters and digits only, so spacing, chunking and punctuation
vanish) are the base; `leet` maps digit and symbol substitutions back to letters; reversal and
ROT13 are applied to the marks instead (same cost, one pass); `decoded_runs` decodes base64,
base32, hex, binary, decimal character codes, Morse, URL/HTML escapes and the NATO alphabet.
Acrostics (first letters of lines, sentences, words) are kept by the streaming scanner.
Everything here is pure and cheap: C-level regex and str methods, no per-character loops on
ASCII text.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import html
import re
import unicodedata
import urllib.parse
from collections.abc import Iterator

_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_NON_ALNUM = re.compile(r"[\W_]+")
# look-alike letters a thief (or a translation) swaps in for Latin ones
_CONFUSABLE = str.maketrans(
    "\u0430\u0432\u0435\u0451\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0456"
    "\u0458\u0455\u0501\u0261\u03b1\u03b2\u03b5\u03b7\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4"
    "\u03c5\u03c7\u03c9\u03c2\u00f8\u0142\u0111\u0131",
    "abeekmhopctyxijsdgabenikvoptuxwsoldi")
# leetspeak back to letters; l and 1 and i are one class (so are the marks: see `leet`)
_LEET = str.maketrans({"0": "o", "1": "i", "!": "i", "|": "i", "l": "i", "3": "e", "€": "e",
                       "4": "a", "@": "a", "^": "a", "5": "s", "$": "s", "7": "t", "+": "t",
                       "8": "b", "9": "g", "6": "g", "2": "z"})
_LEET_CHARS = frozenset("0123456789!|@^$+€")
_ROT13 = str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm")


def fold(text: str) -> str:
    """Case, compatibility forms, diacritics and look-alike letters folded away."""
    if text.isascii():
        return text.lower()
    text = _COMBINING.sub("", unicodedata.normalize("NFKD", text))
    return text.casefold().translate(_CONFUSABLE)


def compact(folded: str) -> str:
    """Letters and digits only: spacing, chunking, punctuation and line breaks removed."""
    return _NON_ALNUM.sub("", folded)


def leet(folded: str) -> str:
    """Leetspeak mapped back (4→a, 3→e, 0→o, 1/!/l→i, $→s, 7→t, ...), then compacted."""
    return _NON_ALNUM.sub("", folded.translate(_LEET))


def has_leet(text: str) -> bool:
    return not _LEET_CHARS.isdisjoint(text)


def rot13(text: str) -> str:
    return text.translate(_ROT13)


_LOWER = "abcdefghijklmnopqrstuvwxyz"
#: Caesar shifts back (shift k undone), and Atbash (a<->z), for views of cipher-like text
UNSHIFT = tuple((k, str.maketrans(_LOWER, _LOWER[-k:] + _LOWER[:-k])) for k in range(1, 26)
                if k != 13)
ATBASH = str.maketrans(_LOWER, _LOWER[::-1])
_LETTER_RUNS = re.compile(r"[a-z]{2,}")
_GLUE = (" the ", " and ", " to ", " of ", " is ", " you ", " it ")


def cipher_like(folded: str, common: frozenset[str]) -> bool:
    """Text whose words are mostly not English words (a cipher, or code, or an encoding):
    worth the 25 shifted views; ordinary prose is not."""
    if 50 * sum(folded.count(w) for w in _GLUE) >= len(folded):  # prose: a cheap first look
        return False
    words = _LETTER_RUNS.findall(folded)
    if len(words) < 4:
        return False
    return sum(w in common for w in words) < 0.35 * len(words)


# -- encoded runs --------------------------------------------------------------------------

# base64 (also url-safe and base32): long tokens, wrapped lines, or 4-character groups
_B64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{12,}={0,2}(?:\s+[A-Za-z0-9+/_\-]{12,}={0,2})*"
                      r"(?:\s+[A-Za-z0-9+/_\-]{2,11}={0,2})?"
                      r"|(?:[A-Za-z0-9+/]{4}[ \t]+){3,}[A-Za-z0-9+/]{1,4}={0,2}")
_ENCODED_LOOK = re.compile(r"[0-9+/=]|[a-z][A-Z]")  # ordinary words have neither
_HEX_RUN = re.compile(r"(?:(?:0x|\\x)?[0-9A-Fa-f]{2}[\s,:;\-]*){4,}")
_BIN_RUN = re.compile(r"(?:[01]{8}[\s,;]*){3,}")
_DEC_RUN = re.compile(r"(?<![\d.])(?:\d{2,3}[\s,;]+){3,}\d{2,3}(?![\d.])")
_DOT = r"[.\-\u2022\u2013\u2014]{1,7}"
_MORSE_HINT = re.compile(r"[.\-\u2022\u2013\u2014][ \t]+/?[ \t]*[.\-\u2022\u2013\u2014]{1,7}[ \t]")
_MORSE_RUN = re.compile(_DOT + r"(?:[ \t]+/?[ \t]*" + _DOT + r"){3,}")
_ESCAPES = re.compile(r"%[0-9A-Fa-f]{2}|&#x?[0-9A-Fa-f]+;|\\u[0-9A-Fa-f]{4}")
_NATO = {"alfa": "a", "alpha": "a", "bravo": "b", "charlie": "c", "delta": "d", "echo": "e",
         "foxtrot": "f", "golf": "g", "hotel": "h", "india": "i", "juliet": "j",
         "juliett": "j", "kilo": "k", "lima": "l", "mike": "m", "november": "n", "oscar": "o",
         "papa": "p", "quebec": "q", "romeo": "r", "sierra": "s", "tango": "t",
         "uniform": "u", "victor": "v", "whiskey": "w", "whisky": "w", "xray": "x",
         "x-ray": "x", "yankee": "y", "zulu": "z", "zero": "0", "one": "1", "two": "2",
         "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
         "nine": "9", "niner": "9", "dash": "", "hyphen": "", "space": "", "dot": "",
         "underscore": "", "slash": ""}  # separators spelled out: the run goes on
_NATO_RUN = re.compile(r"(?i)\b(?:(?:" + "|".join(sorted(_NATO, key=len, reverse=True))
                       + r")\b[\s,;.\-]*){4,}")
_NATO_HINTS = frozenset(w for w in _NATO if len(w) > 4 or w in (
    "alfa", "golf", "kilo", "lima", "mike", "papa", "zulu", "zero", "one", "two", "four",
    "five", "six", "nine", "dash"))
_MORSE = {".-": "a", "-...": "b", "-.-.": "c", "-..": "d", ".": "e", "..-.": "f", "--.": "g",
          "....": "h", "..": "i", ".---": "j", "-.-": "k", ".-..": "l", "--": "m", "-.": "n",
          "---": "o", ".--.": "p", "--.-": "q", ".-.": "r", "...": "s", "-": "t", "..-": "u",
          "...-": "v", ".--": "w", "-..-": "x", "-.--": "y", "--..": "z", "-----": "0",
          ".----": "1", "..---": "2", "...--": "3", "....-": "4", ".....": "5", "-....": "6",
          "--...": "7", "---..": "8", "----.": "9"}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "ignore") if data else ""


def _b64(run: str) -> Iterator[str]:
    s = "".join(run.split()).rstrip("=").replace("-", "+").replace("_", "/")
    for off in range(4):  # a run can start anywhere in the encoding's 4-character frame
        part = s[off:]
        part = part if len(part) % 4 != 1 else part[:-1]  # 1 over a quantum decodes nothing
        if len(part) >= 8:
            with contextlib.suppress(binascii.Error, ValueError):
                yield _text(base64.b64decode(part + "=" * (-len(part) % 4)))
    up = s.upper()
    if len(up) >= 16 and (s.isupper() or s.islower()) and re.fullmatch(r"[A-Z2-7]+", up):
        for off in range(8):
            part = up[off:]
            if len(part) >= 16:
                for cut in (part + "=" * (-len(part) % 8), part[:len(part) - len(part) % 8]):
                    with contextlib.suppress(binascii.Error, ValueError):
                        yield _text(base64.b32decode(cut))
                        break


def _hex(run: str) -> Iterator[str]:
    digits = re.sub(r"0x|\\x|[^0-9A-Fa-f]", "", run)
    for off in (0, 1):
        part = digits[off:]
        part = part[:len(part) - len(part) % 2]
        if len(part) >= 8:
            yield _text(bytes.fromhex(part))


def decoded_runs(text: str) -> Iterator[tuple[int, str]]:
    """(start in `text`, decoded text) of every run that decodes as one of the encodings a
    model can be asked to write; junk decodes are harmless (marks are simply not in them)."""
    if _ENCODED_LOOK.search(text) is None:  # no digit, +, /, = nor camelCase: no encoding
        yield from _words_runs(text)
        return
    for m in _B64_RUN.finditer(text):
        run = m.group()
        if _ENCODED_LOOK.search(run) is not None or (run.isupper() and len(run) >= 16):
            for out in _b64(run):
                yield m.start(), out
    for m in _HEX_RUN.finditer(text):
        run = m.group()
        if len(run) >= 16 or any(c.isdigit() for c in run):
            for out in _hex(run):
                yield m.start(), out
    for m in _BIN_RUN.finditer(text):
        bits = re.sub(r"[^01]", "", m.group())
        yield m.start(), "".join(chr(int(bits[i:i + 8], 2)) for i in range(0, len(bits) - 7, 8))
    for m in _DEC_RUN.finditer(text):
        codes = [int(c) for c in re.findall(r"\d+", m.group())]
        yield m.start(), "".join(chr(c) for c in codes if 32 <= c < 127)
    m0 = _ESCAPES.search(text)
    if m0 is not None:
        yield m0.start(), html.unescape(urllib.parse.unquote(
            text.encode("ascii", "backslashreplace").decode("unicode_escape", "ignore")
            if "\\u" in text else text))
    yield from _words_runs(text)


def _words_runs(text: str) -> Iterator[tuple[int, str]]:
    """Runs spelled in words: the NATO alphabet (and digits as words)."""
    if _MORSE_HINT.search(text) is not None:
        for m in _MORSE_RUN.finditer(text):
            run = m.group().replace("\u2022", ".").replace("\u2013", "-").replace("\u2014", "-")
            yield m.start(), "".join(_MORSE.get(sym, " ") for sym in
                                     re.split(r"[ \t/]+", run.strip()))
    if len(_NATO_HINTS.intersection(text.lower().split())) < 2:
        return
    for m in _NATO_RUN.finditer(text):
        words = re.findall(r"[a-z]+(?:-ray)?", m.group().lower())
        yield m.start(), "".join(_NATO.get(w, "") for w in words)


# -- acrostics -----------------------------------------------------------------------------

LINE_START = re.compile(r"(?m)^[^\w\n]*([^\W_])")
SENTENCE_START = re.compile(r"(?:\A|(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+)[^\w]*?([^\W_])")
WORD_START = re.compile(r"(?<![^\W_])([^\W\d_])")


# -- the open tail ---------------------------------------------------------------------------

# Read on the reversed tail of a stream: the text a disguise could still be building at its
# end — the last token, and before it any tokens of at most 4 characters (letter-spaced text,
# hex bytes, character codes) or 12+ characters of base64/hex alphabet (a wrapped encoded run).
_OPEN_TAIL = re.compile(r"\S*(?:[\s,;:|]+(?:[A-Za-z0-9+/=_\-]{12,}|[01]{8}|\S{1,4})"
                        r"(?![^\s,;:|]))*")


def open_tail(tail: str) -> int:
    """How many characters at the end of `tail` could still be part of a disguised run."""
    m = _OPEN_TAIL.match(tail[::-1])
    return m.end() if m else 0
