"""The streaming scanner behind the leak filter: an answer's decoded views searched for the
prompt's marks, and how much of a stream's tail must wait to be judged.

Text is judged in steps (every `step` characters past the hold, and at the end), not per
delta: a view costs the same for 1 character as for 50, and most deltas are a few
characters. A judgement looks at the text not yet released (and a short lookback before it)
in every view of leak_views.py, plus acrostics kept over the whole answer. What it may release
is everything except, at the end:
- the last `hold` compact characters (a copied run of the prompt, disguised, shows in grams);
- the longest tail that is the start of some form of a mark (a code half written, spaced or
  reversed or in leetspeak, is never released before it can be judged);
- an open run (letter-spaced text, hex bytes, base64 lines, the last token: leak_views'
  `open_tail`),
never more than `hold_max` characters. An acrostic cannot be held (its letters are lines
apart): it is found when its last letter comes and that letter's line is not released.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from .leak_marks import PromptMarks
from .leak_views import (
    ATBASH,
    LINE_START,
    SENTENCE_START,
    UNSHIFT,
    WORD_START,
    cipher_like,
    compact,
    decoded_runs,
    fold,
    has_leet,
    leet,
    open_tail,
)

Kind = Literal["canary", "span", "mark", "disguised", "semantic"]
_ALNUM = re.compile(r"[^\W_]")
_LEETISH = re.compile(r"[^\W_]|[!|@^$+€]")
_STRIDE = 8
_LOOKBACK = 16
_MASK = {c: ("1" if chr(c).isalnum() else "0") for c in range(128)}
_LEET_MASK = {c: ("1" if chr(c).isalnum() or chr(c) in "!|@^$+" else "0") for c in range(128)}


@dataclass(frozen=True)
class Detection:
    """A leak found in a response: `start`/`end` are character offsets in the raw response;
    `view` says in which form (plain, reversed, base64, acrostic, ...)."""

    kind: Kind
    start: int
    end: int
    view: str = "plain"


def _offsets(text: str, leetish: bool = False) -> list[int]:
    """Offset in `text` of each character of its compact (or leet) view."""
    if text.isascii():
        rx = _LEETISH if leetish else _ALNUM
        return [m.start() for m in rx.finditer(text)]
    out: list[int] = []
    for i, ch in enumerate(text):
        n = len(leet(fold(ch)) if leetish else compact(fold(ch)))
        out.extend([i] * n)
    return out


def _cut(tail: str, k: int, leetish: bool = False) -> int:
    """The offset in `tail` from which its compact (or leet) view has its last `k`
    characters: a regex over the reversed mask of kept characters, at C speed."""
    if k <= 0:
        return len(tail)
    if not tail.isascii():
        offs = _offsets(tail, leetish)
        return offs[-k] if k <= len(offs) else 0
    mask = tail.translate(_LEET_MASK if leetish else _MASK)[::-1]
    m = _nth(k).match(mask)
    return len(tail) - m.end() if m else 0


@lru_cache(maxsize=256)
def _nth(k: int) -> re.Pattern[str]:
    return re.compile(f"(?:0*1){{{k}}}")


class _Acrostic:
    """First letters of lines, sentences or words over the whole answer so far (the last
    `keep` of them: a mark is at most that long)."""

    def __init__(self, name: str, rx: re.Pattern[str], keep: int) -> None:
        self.name, self.rx, self.keep = name, rx, keep
        self.letters = ""
        self.pos = 0  # raw offset from which to look for starts

    def add(self, raw: str, base: int, end: int) -> int:
        """Adds the starts in raw[pos:end]; returns how many letters were added."""
        start = max(self.pos, base)
        letters = "".join(self.rx.findall(raw, start - base, end - base))
        if not letters.isascii():
            letters = compact(fold(letters))
        self.letters = (self.letters + letters.lower())[-self.keep:]
        self.pos = end
        # a line or sentence begun whose first letter has not come yet: read it again
        if self.name == "line":
            open_at = raw.rfind("\n", start - base, end - base)
        elif self.name == "sentence":
            open_at = max(raw.rfind(c, start - base, end - base) for c in ".!?")
        else:
            open_at = -1
        if open_at >= 0 and _ALNUM.search(raw, open_at + 1, end - base) is None:
            self.pos = base + open_at + (1 if self.name == "line" else 0)
        return len(letters)


class ViewScanner:
    """Judges a stream's views for marks; `safe` is the raw offset up to which the text has
    been judged and may be released; `leak_at` the start of the first leak, if any."""

    def __init__(self, marks: PromptMarks, *, hold_max: int = 256, step: int = 96,
                 first_step: int = 16) -> None:
        self.marks = marks
        self.hold_max = hold_max
        self.step = step
        self.hold = marks.plain_gram + _STRIDE - 1  # compact characters always held
        self.raw = ""  # the text from `base` on, up to the last judgement
        self._parts: list[str] = []  # fed since
        self.base = 0
        self.total = 0
        self.safe = 0
        self.leak_at: int | None = None
        self.detections: list[Detection] = []
        self.weak: set[str] = set()
        # text before `safe` read again: a copied run or a mark cannot straddle `safe` (the
        # last `hold` compact characters and any mark's start are always held), so only a
        # few characters, or the released part of a long encoded run (set in `_release`)
        self._lookback = _LOOKBACK
        self._judged = 0  # raw offset up to which text was judged
        self._next = self.hold + first_step  # judge once this much is waiting (the first
        # judgement early, for the time to the first text; then in larger steps, for cost)
        keep = marks.longest + 8
        self._acrostics = [_Acrostic("line", LINE_START, keep),
                           _Acrostic("sentence", SENTENCE_START, keep),
                           _Acrostic("word", WORD_START, keep)]

    def feed(self, delta: str) -> None:
        if self.leak_at is not None:
            return
        self._parts.append(delta)
        self.total += len(delta)
        if self.total - self.safe >= self._next:
            self.judge(final=False)

    def finish(self) -> None:
        if self.leak_at is None:
            self.judge(final=True)

    # ---- judging

    def judge(self, *, final: bool) -> None:
        m = self.marks
        if self._parts:
            self.raw += "".join(self._parts)
            self._parts.clear()
        start = max(self.base, self.safe - self._lookback)
        window = self.raw[start - self.base:]
        folded = fold(window)
        view = compact(folded)
        hits: list[tuple[int, Detection]] = []  # (raw start, detection)
        # what earlier judgements saw needs no new look: marks and grams that end in new text
        seen = window[:max(0, self._judged - start)]
        new = len(compact(fold(seen))) if seen else 0
        if self._judged == 0:
            hits += self._head(window, view, start)
        if final:
            hits += self._tail(window, view, start)
        self._judged = self.total
        pos = max(0, new - m.longest)

        def at(k: int, leetish: bool = False) -> int:
            offs = _offsets(window, leetish)
            return start + (offs[k] if k < len(offs) else len(window))

        if m.compact_re is not None:  # plain marks, and reversed and ROT13 forms
            for hit in m.compact_re.finditer(view, pos):
                form = hit.group()
                mark = m.mark_of(form)
                if form != mark.key:
                    s = at(hit.start())
                    name = "reversed" if mark.key[::-1] == form else "rot13"
                    hits.append((s, Detection("disguised", s, at(hit.end() - 1) + 1, name)))
                    continue
                if mark.strong or (mark.key not in self.weak
                                   and len(self.weak) + 1 >= m.weak_needed):
                    s = at(hit.start())
                    hits.append((s, Detection("mark", s, at(hit.end() - 1) + 1)))
                if not mark.strong:
                    self.weak.add(mark.key)
        lv = leet(folded) if has_leet(window) else None
        if m.leet_re is not None and lv is not None:
            lpos = max(0, len(leet(fold(seen))) - m.longest) if seen else 0
            for hit in m.leet_re.finditer(lv, lpos):
                if m.mark_of(hit.group()).key not in view:  # else plain text, counted there
                    s = at(hit.start(), leetish=True)
                    hits.append((s, Detection("disguised", s, at(hit.end() - 1, True) + 1,
                                              "leetspeak")))
        if m.shift_re is not None and cipher_like(folded, m.common):
            for name, table in (("atbash", ATBASH), *((f"caesar-{k}", t) for k, t in UNSHIFT)):
                shifted = m.shift_re.search(view.translate(table), pos)
                if shifted is not None:
                    s = at(shifted.start())
                    hits.append((s, Detection("disguised", s, at(shifted.end() - 1) + 1,
                                              name)))
                    break
        k = self._grams(view, m.plain_grams, m.plain_gram, new)
        if k is None:
            k = self._grams(view, m.twisted_grams, m.gram, new)
        if k is not None:
            s = at(k)
            hits.append((s, Detection("span", s, at(k + m.gram - 1) + 1, "compact")))
        for run_start, text in decoded_runs(window):
            dv = compact(fold(text))
            if not dv:
                continue
            found = ((m.plain_re is not None and _strong_in(m, m.plain_re, dv))
                     or (m.disguised_re is not None and m.disguised_re.search(dv) is not None)
                     or self._grams(dv, m.short_grams, m.gram) is not None
                     or self._grams(dv, m.twisted_grams, m.gram) is not None)
            if found:
                s = start + run_start
                hits.append((s, Detection("disguised", s, start + len(window), "decoded")))
        end = self.total if final else self._complete_to(window, start)
        for acro in self._acrostics:
            rx = m.words_re if acro.name == "word" else m.acrostic_re
            added = acro.add(self.raw, self.base, end)
            if rx is not None and added:
                tail = acro.letters[-(added + m.longest):]
                found = rx.search(tail) is not None
                if not found and acro.name != "word":  # a code or name begun line by line
                    letters = acro.letters
                    found = any(letters[-k:] in m.strong_prefixes
                                for k in range(min(m.longest, len(letters)), 3, -1))
                if found:  # its last letter is in text not yet released: none of that goes
                    s = self.safe
                    hits.append((s, Detection("disguised", s, self.total,
                                              f"acrostic-{acro.name}")))
        if hits:
            s = min(h[0] for h in hits)
            self.detections.extend(d for _, d in sorted(hits, key=lambda h: h[0]))
            self.leak_at = max(s, self.safe)
            return
        self._release(view, lv, final)

    def _head(self, window: str, view: str, start: int) -> list[tuple[int, Detection]]:
        """An answer that starts with the end of a code or name (the next slice of a
        prompt read out piece by piece): at least half of it, or 4 characters."""
        for key in self.marks.strong_keys:
            for k in range(len(key) - 1, _least(key) - 1, -1):
                if view.startswith(key[-k:]):
                    offs = _offsets(window[:8 * k + 32])
                    after = (offs if len(offs) >= k else _offsets(window))[k - 1] + 1
                    if after >= len(window) or not window[after].isalnum():
                        return [(start, Detection("mark", start, start + after, "part"))]
                    break
        return []

    def _tail(self, window: str, view: str, start: int) -> list[tuple[int, Detection]]:
        """An answer that ends with the start of a code or name (not a whole first word of
        it: an honest answer may end in "orchid")."""
        m = self.marks
        for key in m.strong_keys:
            for k in range(len(key) - 1, _least(key) - 1, -1):
                if view.endswith(key[:k]):
                    if k in m.part_ends.get(key, ()):
                        break
                    offs = _offsets(window)
                    at = offs[len(offs) - k]
                    if at == 0 or not window[at - 1].isalnum():
                        s = start + at
                        return [(s, Detection("mark", s, start + len(window), "part"))]
                    break
        return []

    def _complete_to(self, window: str, start: int) -> int:
        """Acrostics read up to here: everything fed (starts are found at their letter)."""
        return start + len(window)

    def _grams(self, view: str, grams: frozenset[str], n: int, new: int = 0) -> int | None:
        """Where a run of `n` + stride characters of the prompt (in `grams`' form) that ends
        after `new` starts in `view`, if one does: grams looked up every `_STRIDE`."""
        if not grams:
            return None
        for i in range(max(0, new - n - _STRIDE), len(view) - n + 1, _STRIDE):
            if view[i:i + n] in grams:
                return i
        return None

    def _release(self, view: str, lv: str | None, final: bool) -> None:
        """Moves `safe` on: `view` and `lv` are the compact and leet views of the text judged,
        which ends with the tail read here."""
        if final:
            self.safe = self.total
            return
        m = self.marks
        total = self.total
        tail_from = max(self.safe, total - self.hold_max)
        tail = self.raw[tail_from - self.base:]
        keep = min(len(view), self.hold)  # compact characters always held
        for k in range(min(m.longest, len(view)), keep, -1):
            if view[-k:] in m.prefixes:
                keep = k
                break
        cut = tail_from + _cut(tail, keep)
        if lv is not None:
            for k in range(min(m.longest, len(lv)), 0, -1):
                if lv[-k:] in m.prefixes:
                    cut = min(cut, tail_from + _cut(tail, k, leetish=True))
                    break
        cut = min(cut, total - open_tail(tail))
        safe = max(self.safe, tail_from, cut)
        open_run = total - safe
        self._lookback = (_LOOKBACK if open_run < self.hold_max - 16 else
                          min(self.hold_max, m.longest * 5 + 16))
        self.safe = safe
        # the next judgement: a step on (longer once the answer is long: cost), never past
        # hold_max, and 16 characters on while a long run keeps the text held
        step = self.step if total < 2048 else 2 * self.step
        self._next = max(open_run + 16, min(max(self.hold, open_run) + step, self.hold_max))
        self._trim()

    def _trim(self) -> None:
        drop = self.safe - self.hold_max - self._lookback - self.base
        if drop > 4096:
            self.raw = self.raw[drop:]
            self.base += drop


def _least(key: str) -> int:
    """The shortest part of a mark at an answer's end counted: half of it, 3 to 4."""
    return max(3, min(4, -(-len(key) // 2)))


def _strong_in(m: PromptMarks, rx: re.Pattern[str], view: str) -> bool:
    """A mark in decoded text: an honest answer has no reason to encode the prompt's words,
    so any mark counts, numbers of 3-4 digits excepted (those occur in decoded junk)."""
    return any(m.mark_of(h.group()).strong or not h.group().isdigit()
               for h in rx.finditer(view))
