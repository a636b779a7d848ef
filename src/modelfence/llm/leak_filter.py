"""Streaming leak filters: what of a response may be released while it is still being written.

`LeakFilter` runs a response's deltas through the verbatim `SpanFilter` (the canary and
every `span_len`-character span of the system prompt, matched in `normalise`d text) and the
`leak_scan.ViewScanner` (the prompt's marks in decoded views of the answer), releasing text
as soon as no leak can still start in it. Made per response by `canary.LeakPolicy.filter`.
"""

from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING

from .leak_scan import Detection, Kind, ViewScanner

if TYPE_CHECKING:
    from .canary import LeakPolicy

TEXT_KEPT = 16_384  # characters of an answer a filter keeps for the paraphrase check
BATCH = 16  # deltas shorter than this are filtered together (a per-delta cost saved)
_WS = re.compile(r"\s+")
_RUNS = re.compile(" +")
# every whitespace character (str.isspace, as re's \s) to a plain space, length kept
_SPACES = {c: " " for c in range(0x3001) if chr(c).isspace()}


def _lower(text: str) -> str:
    low = text.lower()
    if len(low) == len(text):
        return low
    # keep one character per character, so positions map back to the raw text
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def normalise(text: str) -> str:
    """Lower case, each whitespace run as one space: the form leaks are matched in."""
    return _WS.sub(" ", _lower(text))


class LeakFilter:
    """Streaming filter over text deltas: `feed(delta)` returns what is safe to release now,
    `finish()` the rest. `leaked` is set on the first detection; `detections` lists them all.

    The verbatim `SpanFilter` and the `ViewScanner` see every delta: in block mode side by
    side (the scanner reads the raw text, and the span filter's output, a prefix of it, waits
    until the scanner has judged it too); in redact mode one after the other (the scanner
    reads the span filter's output, verbatim leaks already redacted). Either way the text
    waiting is one run, at offset `_at` of what the scanner reads."""

    def __init__(self, policy: LeakPolicy) -> None:
        self.policy = policy
        self.spans = SpanFilter(policy)
        self.views = (ViewScanner(policy.marks, hold_max=policy.hold_max)
                      if policy.marks is not None else None)
        self.finished = False
        self._block = policy.mode == "block"
        self._fed: list[str] = []  # the answer as fed, its first TEXT_KEPT characters
        self._fed_len = 0
        self._wait: list[str] = []  # the span filter's output not yet released
        self._wait_len = 0
        self._at = 0  # where the waiting text starts, in the scanner's text
        self._stopped = False  # a disguised leak ended the answer
        self._batch: list[str] = []  # deltas not yet filtered: they go on together, BATCH
        self._batch_len = 0  # characters at least (the scanner holds far more anyway)

    @property
    def leaked(self) -> bool:
        return self.spans.leaked or (self.views is not None and self.views.leak_at is not None)

    @property
    def detections(self) -> list[Detection]:
        views = self.views.detections if self.views is not None else []
        return [*self.spans.detections, *views]

    @property
    def held(self) -> int:
        """Characters fed but neither released nor dropped."""
        return self.spans.held + self._wait_len + self._batch_len

    @property
    def text(self) -> str:
        """The answer as fed (its first `TEXT_KEPT` characters), for checks after it."""
        return "".join(self._fed)

    @property
    def pending(self) -> str:
        if self._stopped or (self.leaked and self._block):
            return ""
        return "".join(self._wait) + self.spans.pending + "".join(self._batch)

    def feed(self, delta: str) -> str:
        if self.finished:
            raise RuntimeError("feed() after finish()")
        if self._stopped or not delta or (self._block and self.spans.leaked):
            return ""
        if self._fed_len < TEXT_KEPT:
            self._fed.append(delta[:TEXT_KEPT - self._fed_len])
            self._fed_len += len(self._fed[-1])
        views = self.views
        if views is None:
            return self.spans.feed(delta)
        if self._batch_len + len(delta) < BATCH:
            self._batch.append(delta)
            self._batch_len += len(delta)
            return ""
        if self._batch:
            self._batch.append(delta)
            delta = "".join(self._batch)
            self._batch, self._batch_len = [], 0
        return self._filter(delta)

    def finish(self) -> str:
        if self.finished:
            return ""
        self.finished = True
        if self._stopped:
            return ""
        if self.views is None:
            return self.spans.finish()
        head = ""
        if self._batch:
            batch = "".join(self._batch)
            self._batch, self._batch_len = [], 0
            head = self._filter(batch)
            if self._stopped:
                return head
        out = self.spans.finish()
        if out:
            if not self._block:
                self.views.feed(out)
            self._wait.append(out)
            self._wait_len += len(out)
        self.views.finish()
        return head + self._release()

    def _filter(self, delta: str) -> str:
        views = self.views
        assert views is not None
        if self._block and self.spans.leaked:
            return ""
        out = self.spans.feed(delta)
        if self._block:
            views.feed(delta)
            if self.spans.leaked:
                views.finish()
        elif out:
            views.feed(out)
        if out:
            self._wait.append(out)
            self._wait_len += len(out)
        if views.leak_at is None and views.safe <= self._at:
            return ""  # the common case: nothing newly judged
        return self._release()

    def _release(self) -> str:
        assert self.views is not None
        leak = self.views.leak_at
        limit = self.views.safe if leak is None else leak
        n = min(max(limit - self._at, 0), self._wait_len)
        waiting = "".join(self._wait)
        out, rest = waiting[:n], waiting[n:]
        self._wait = [rest] if rest else []
        self._wait_len = len(rest)
        self._at += n
        if leak is not None:
            self._stopped = True
            self._wait, self._wait_len = [], 0
            if not self._block:
                out += self.policy.marker
        return out


class SpanFilter:
    """The canary and verbatim spans of the prompt, over text deltas: `feed(delta)` returns
    what is safe to release now, `finish()` the rest (a span leaking on over several windows
    is one detection, extended)."""

    def __init__(self, policy: LeakPolicy) -> None:
        self.policy = policy
        self.detections: list[Detection] = []
        self.leaked = False
        self.finished = False
        self._raw = ""  # context: the raw text from absolute offset _base on
        self._base = 0
        self._norm = ""  # the normalised context, from absolute normalised index _nbase on
        self._nbase = 0
        self._cn = ""  # the canary's view of the context: normalised, without spaces
        self._raw_total = 0
        self._akeys: list[int] = [0]  # normalised index -> raw offset: raw = k + off(k)
        self._aoffs: list[int] = [0]
        self._emit = 0  # raw offset up to which text was released (or dropped as a leak)
        self._red_end = -1  # end of the last redacted region
        self._cuts: list[tuple[int, int]] = []  # redact mode: leaked regions not yet passed
        self._last_span = -1  # index in detections of the last span detection
        self._last_span_end = -1  # its end, in normalised indices
        self._slack = 2 * policy.bound + 64  # context kept beyond need, trimmed in batches

    @property
    def held(self) -> int:
        """Raw characters fed but neither released nor dropped."""
        return self._raw_total - self._emit

    @property
    def pending(self) -> str:
        if self.leaked and self.policy.mode == "block":
            return ""
        return self._raw[self._emit - self._base:]

    def feed(self, delta: str) -> str:
        if self.finished:
            raise RuntimeError("feed() after finish()")
        if not delta or (self.leaked and self.policy.mode == "block"):
            return ""
        found = self._append(delta)
        if found is not None or self._cuts:
            return self._release(found, final=False)
        # the common case, kept short: release all but the last `bound` normalised characters
        norm, nbase = self._norm, self._nbase
        keep_from = nbase + len(norm) - self.policy.bound
        if keep_from <= nbase:
            return ""
        akeys = self._akeys
        safe = keep_from + (self._aoffs[-1] if akeys[-1] <= keep_from else
                            self._aoffs[bisect.bisect_right(akeys, keep_from) - 1])
        emit, base = self._emit, self._base
        out = self._raw[emit - base:safe - base] if safe > emit else ""
        if safe > emit:
            self._emit = safe
        if keep_from - nbase > self._slack:
            self._trim(keep_from)
        return out

    def finish(self) -> str:
        if self.finished:
            return ""
        self.finished = True
        if self.leaked and self.policy.mode == "block":
            return ""
        return self._release(None, final=True)

    # ---- internals

    def _raw_at(self, k: int) -> int:
        """Raw offset where the normalised character at absolute index k starts."""
        if k >= self._nbase + len(self._norm):
            return self._raw_total
        i = bisect.bisect_right(self._akeys, k) - 1
        return k + self._aoffs[i]

    def _append(self, delta: str) -> int | None:
        """Adds `delta` to the context and checks every window it completes; returns the start
        of the earliest new detection, or None."""
        dn = delta.lower()
        if len(dn) != len(delta):
            dn = _lower(delta)
        norm = self._norm
        if not dn.isprintable():  # whitespace other than " " (or other unprintables)
            dn = dn.translate(_SPACES)
        if "  " in dn or (dn[0] == " " and norm[-1:] == " "):
            dn = self._collapse(delta, dn, norm)
        old_len = len(norm)
        self._raw += delta
        self._raw_total += len(delta)
        self._norm = norm = norm + dn
        pol = self.policy
        earliest: int | None = None
        # (a) the canary, whitespace between its characters ignored
        canary = pol.canary
        if canary:
            cn = self._cn
            start = len(cn) - len(canary) + 1
            self._cn = cn = cn + dn.replace(" ", "")
            if cn.find(canary, start if start > 0 else 0) >= 0:
                earliest = self._canary_hits(len(delta))
        # (b) verbatim spans of the system prompt: every new window of n characters
        grams = pol.grams
        if grams:
            n = pol.span_len
            for i in range(max(0, old_len - n + 1), len(norm) - n + 1):
                if hash(norm[i:i + n]) in grams:
                    s = self._span_hits(i)
                    if s is not None and (earliest is None or s < earliest):
                        earliest = s
        return earliest

    def _collapse(self, delta: str, dn: str, norm: str) -> str:
        """Collapses whitespace runs of a delta, recording where positions shift."""
        merge = norm[-1:] == " " and dn[0] == " "
        ntotal = self._nbase + len(norm)
        base_off = self._raw_total - ntotal
        removed = 0
        for m in _RUNS.finditer(dn):
            s, e = m.span()
            cut = e - s if (s == 0 and merge) else e - s - 1
            if cut:
                removed += cut
                key, off = ntotal + e - removed, base_off + removed
                if self._akeys[-1] == key:
                    self._aoffs[-1] = off
                else:
                    self._akeys.append(key)
                    self._aoffs.append(off)
        dn = _RUNS.sub(" ", dn)
        return dn[1:] if merge else dn

    def _canary_hits(self, added: int) -> int | None:
        pol = self.policy
        assert pol.canary_re is not None
        checked = self._raw_total - added
        earliest: int | None = None
        for m in pol.canary_re.finditer(self._raw):
            s, e = self._base + m.start(), self._base + m.end()
            if e > checked:
                self._detect("canary", s, e)
                earliest = s if earliest is None else min(earliest, s)
        return earliest

    def _span_hits(self, i: int) -> int | None:
        pol, norm, n = self.policy, self._norm, self.policy.span_len
        earliest: int | None = None
        if norm[i:i + n] in pol.prompt:  # else a hash collision
            k = self._nbase + i
            s, e = self._raw_at(k), self._raw_at(k + n)
            if self._last_span >= 0 and k <= self._last_span_end:
                old = self.detections[self._last_span]
                self.detections[self._last_span] = Detection("span", old.start, e)
                self._add_cut(s, e)
            else:
                self._last_span = len(self.detections)
                self._detect("span", s, e)
            self._last_span_end = k + n
            earliest = s
        return earliest

    def _detect(self, kind: Kind, s: int, e: int) -> None:
        self.detections.append(Detection(kind, s, e))
        self.leaked = True
        self._add_cut(s, e)

    def _add_cut(self, s: int, e: int) -> None:
        if self.policy.mode == "redact":
            self._cuts.append((s, e))

    def _release(self, found: int | None, *, final: bool) -> str:
        ntotal = self._nbase + len(self._norm)
        keep_from = max(self._nbase, ntotal - self.policy.bound)
        safe = self._raw_total if final else self._raw_at(keep_from)
        base, raw = self._base, self._raw
        if self.policy.mode == "block":
            if found is not None:  # what precedes the leak holds no complete leak
                safe = found
            safe = max(safe, self._emit)
            out = raw[self._emit - base:safe - base]
            self._emit = safe
        else:
            parts: list[str] = []
            pos = self._emit
            if self._cuts:
                self._cuts.sort()
                rest: list[tuple[int, int]] = []
                for s, e in self._cuts:
                    if s >= safe and s > self._red_end:  # not yet: a leak may go on before
                        rest.append((s, e))
                        continue
                    if s > self._red_end:  # a new leaked region
                        if s > pos:
                            parts.append(raw[pos - base:s - base])
                        parts.append(self.policy.marker)
                    pos = max(pos, e)
                    self._red_end = max(self._red_end, e)
                self._cuts = rest
            if safe > pos:
                parts.append(raw[pos - base:safe - base])
                pos = safe
            self._emit = pos
            out = "".join(parts)
        self._trim(keep_from)
        return out

    def _trim(self, keep_from: int) -> None:
        """Drops context no window can still need (and nothing not yet released)."""
        if keep_from <= self._nbase:
            return
        raw_from = min(self._raw_at(keep_from), self._emit)
        if raw_from < self._raw_at(keep_from):
            return  # only in block mode after a leak; the context is no longer used
        self._raw = self._raw[raw_from - self._base:]
        self._base = raw_from
        self._norm = self._norm[keep_from - self._nbase:]
        self._nbase = keep_from
        self._cn = self._cn[-len(self.policy.canary):]
        i = bisect.bisect_right(self._akeys, keep_from) - 1
        if i > 0:
            del self._akeys[:i]
            del self._aoffs[:i]
