"""Server-sent events read as the WHATWG HTML standard defines them (§9.2 "Server-sent events").

An upstream may end lines with CRLF, LF or a bare CR, split an event's data over several
`data:` lines (joined with "\\n"), add comments (`:` lines), `event:`, `id:` and `retry:`
fields, and break any of that across network chunks — a CR at the end of one chunk and an
LF at the start of the next are one line ending. Everything an upstream sends is read
through this parser, so that no event can reach a client without passing the gateway's
filters: an event the relay does not understand is refused, never passed through raw.

One departure, on the safe side: an event cut off by the end of the stream (no blank line
after it) is still dispatched, because the relay filters it like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UpstreamError

#: One event (or one line) larger than this ends the stream: a bounded buffer per stream.
MAX_EVENT_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """A dispatched event: its data (lines joined with "\\n") and its other fields."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SseParser:
    """Feed it bytes as they arrive; it returns the events completed so far."""

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._parts: list[bytes] = []  # an unfinished line, kept in pieces (no re-copying)
        self._part_bytes = 0
        self._cr = False             # the last chunk ended in CR: an LF next is part of it
        self._head = b""             # the first bytes, until it is known whether a BOM leads
        self._first = True
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._has_data = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self._first:  # a UTF-8 byte order mark is allowed before the first line only
            chunk, self._head = self._head + chunk, b""
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk
                return []
            chunk, self._first = chunk.removeprefix(_BOM), False
        if not chunk:
            return []
        if self._cr and chunk[0] == 0x0A:
            chunk = chunk[1:]
        self._cr = False
        out: list[SseEvent] = []
        start = 0
        for m in _EOL.finditer(chunk):
            line = chunk[start:m.start()]
            if self._parts:
                line = b"".join((*self._parts, line))
                self._parts, self._part_bytes = [], 0
            self._line(line, out)
            start = m.end()
            if m.end() == len(chunk) and m.group() == b"\r":
                self._cr = True
        if start < len(chunk):
            self._parts.append(chunk[start:])
            self._part_bytes += len(chunk) - start
            if self._part_bytes > self._max:
                raise UpstreamError("the upstream model server sent an oversized stream event")
        return out

    def finish(self) -> list[SseEvent]:
        """At the end of the stream: the last line, and the event it leaves unfinished."""
        out: list[SseEvent] = []
        if self._head:  # the whole stream was shorter than a BOM
            head, self._head, self._first = self._head, b"", False
            out += self.feed(head)
        if self._parts:
            line = b"".join(self._parts)
            self._parts, self._part_bytes = [], 0
            self._line(line, out)
        self._dispatch(out)
        return out

    def _line(self, raw: bytes, out: list[SseEvent]) -> None:
        if not raw:
            self._dispatch(out)
            return
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return  # a comment (often a keep-alive)
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(raw)
            if self._size > self._max:
                raise UpstreamError("the upstream model server sent an oversized stream event")
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # any other field is ignored, as the standard says

    def _dispatch(self, out: list[SseEvent]) -> None:
        if self._has_data:
            out.append(SseEvent("\n".join(self._data), self._event or "message", self._id,
                                self._retry))
        self._data, self._size, self._event, self._has_data = [], 0, "", False
        self._retry = None
