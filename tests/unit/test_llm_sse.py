"""The SSE response: events in order, and the end of the stream handled exactly once
however the client leaves — also before the first event (the relay never started); and the
parser that reads upstream streams as the standard defines them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelfence.errors import UpstreamError
from modelfence.llm.sse import SseResponse
from modelfence.llm.sse_events import SseEvent, SseParser


class Relay:
    """An event source that records whether its own clean-up ran."""

    def __init__(self, events: int, gap_s: float = 0.0) -> None:
        self.events, self.gap_s = events, gap_s
        self.started = self.cleaned = False

    async def run(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            for i in range(self.events):
                await asyncio.sleep(self.gap_s)
                yield f"data: {i}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            self.cleaned = True


def respond(relay: Relay, closes: list[str]) -> SseResponse:
    return SseResponse(relay.run(), headers={"Cache-Control": "no-cache"},
                       on_close=lambda: closes.append("closed"))


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


async def test_events_in_order_then_the_end() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    relay, closes = Relay(3), []
    await respond(relay, closes)({"type": "http"}, never_disconnects, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert b"content-length" not in headers
    bodies = [m["body"] for m in sent[1:]]
    assert bodies == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n", b""]
    assert sent[-1]["more_body"] is False
    assert relay.cleaned and closes == ["closed"]


async def test_a_client_gone_before_the_first_event_still_ends_the_call() -> None:
    async def send(message: dict[str, Any]) -> None:
        raise OSError("client went away")

    relay, closes = Relay(3), []
    await respond(relay, closes)({"type": "http"}, never_disconnects, send)
    assert not relay.started and closes == ["closed"]  # the relay never ran; on_close did


async def test_a_disconnect_mid_stream_cancels_the_wait_and_cleans_up() -> None:
    sent: list[bytes] = []
    gone = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("body", b""))
        if len(sent) == 3:
            gone.set()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    relay, closes = Relay(1000, gap_s=0.01), []
    await asyncio.wait_for(respond(relay, closes)({"type": "http"}, receive, send), 5)
    assert relay.cleaned and closes == ["closed"]
    assert len(sent) < 10  # it stopped soon after the client left, without an error


# -- the parser the relay reads upstream streams with (WHATWG SSE) -----------------------------

STREAM = (b'\xef\xbb\xbfdata: {"a":\r\ndata: 1}\r\n\r\n: keep-alive\r'
          b'event: error\rid: 7\rretry: 10\rdata\r\rdata: x\ndata: y\n\ndata: [DONE]\r\r')
EXPECTED = [SseEvent('{"a":\n1}'), SseEvent("", "error", "7", 10),
            SseEvent("x\ny", "message", "7"), SseEvent("[DONE]", "message", "7")]


def parse(chunks: list[bytes]) -> list[SseEvent]:
    parser, out = SseParser(), []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out + parser.finish()


def test_every_line_ending_multi_line_data_and_fields() -> None:
    assert parse([STREAM]) == EXPECTED


def test_any_split_into_chunks_gives_the_same_events() -> None:
    """A CR ending one chunk and an LF starting the next are one line ending; a BOM or a
    line may be split anywhere."""
    for cut in range(1, len(STREAM)):
        assert parse([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut
    assert parse([bytes([b]) for b in STREAM]) == EXPECTED


def test_an_event_cut_off_by_the_end_is_still_dispatched_to_the_filters() -> None:
    assert parse([b"data: tail"]) == [SseEvent("tail")]
    assert parse([b"\xef\xbb"]) == []  # shorter than a BOM, then nothing


def test_an_endless_line_or_event_is_refused() -> None:
    parser = SseParser(max_event_bytes=100)
    with pytest.raises(UpstreamError):
        for _ in range(20):
            parser.feed(b"data: " + b"x" * 10)
    parser = SseParser(max_event_bytes=100)
    with pytest.raises(UpstreamError):
        parser.feed(b"data: xxxxxxxxxx\n" * 20)
