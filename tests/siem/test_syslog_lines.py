"""A principal's name cannot break a syslog line for a reader that splits on Unicode line
breaks (NEL, U+2028, U+2029) either."""

from __future__ import annotations

import orjson

from modelfence.siem.syslog import format_message, sd_escape


def test_unicode_line_breaks_are_replaced_in_structured_data() -> None:
    for brk in ("\x85", "\u2028", "\u2029", "\x9b", "\n", "\r"):
        value = sd_escape(f"mallory{brk}<34>1 forged")
        assert len(value.splitlines()) == 1, repr(brk)
        assert brk not in value
    assert sd_escape("ünïcödé é") == "ünïcödé é"


def test_a_message_is_one_line_whatever_the_names() -> None:
    from .test_syslog_format import doc

    evil = "x\x85<34>1 forged\u2028<34>1 again\u2029"
    msg = format_message(doc(subject=evil, model=evil), facility=4, app_name="mf",
                         hostname="h", procid=1)
    assert len(msg.decode().splitlines()) == 1
    body = msg.split(b"] ", 1)[1]
    assert orjson.loads(body)["actor"]["user"]["name"] == evil  # the JSON still says it
