"""RFC 5424 messages and RFC 6587 octet-counted frames for findings."""

from __future__ import annotations

import re

import orjson

from modelfence.risk import Alert
from modelfence.siem.finding import from_risk_alert
from modelfence.siem.ocsf import detection_finding
from modelfence.siem.syslog import SD_ID, format_message, frame, sd_escape

# RFC 5424: HEADER SP STRUCTURED-DATA SP MSG
RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<host>[!-~]{1,255}) "
    rb"(?P<app>[!-~]{1,48}) (?P<pid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb"(?P<sd>\[[^ =\]\"]+(?: [^ =\]\"]+=\"(?:[^\"\\\]]|\\[\"\\\]])*\")*\]) (?P<msg>.*)$", re.S)


def doc(subject: str = "mallory", model: str = "digits") -> dict[str, object]:
    return detection_finding(from_risk_alert(Alert(
        model=model, kind="principal", subject=subject, tenant=None, risk=0.75, queries=10,
        explanation="uniform rows 0.75"), llm=False))


def test_sd_escape() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    assert sd_escape("plain [x") == "plain [x"


def test_message_matches_rfc5424_and_carries_atlas_in_structured_data() -> None:
    msg = format_message(doc(), facility=4, app_name="modelfence", hostname="gw-1", procid=42)
    m = RFC5424.match(msg)
    assert m is not None, msg[:200]
    assert int(m["pri"]) == 4 * 8 + 3  # auth, high -> err
    assert (m["host"], m["app"], m["pid"], m["msgid"]) == (b"gw-1", b"modelfence", b"42",
                                                           b"finding")
    assert m["sd"].startswith(b"[" + SD_ID.encode())
    assert b'atlas="AML.T0024.002 AML.T0024 AML.T0040"' in m["sd"]
    assert b'model="digits"' in m["sd"] and b'principal="mallory"' in m["sd"]
    assert orjson.loads(m["msg"])["class_uid"] == 2004


def test_hostile_names_are_escaped_and_the_frame_counts_octets() -> None:
    evil = 'ev"il] x\\y ünï'
    msg = format_message(doc(subject=evil), facility=13, app_name="mf app",
                         hostname="h o", procid=1)
    m = RFC5424.match(msg)
    assert m is not None, msg[:300]
    assert m["app"] == b"mfapp" and m["host"] == b"ho"  # no spaces in header fields
    assert 'principal="ev\\"il\\] x\\\\y ünï"'.encode() in m["sd"]
    framed = frame(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(msg)  # octets, not characters


def test_a_name_cannot_forge_a_log_line() -> None:
    msg = format_message(doc(subject="x\n<34>1 forged"), facility=4, app_name="mf",
                         hostname="h", procid=1)
    assert b"\n" not in msg  # the JSON escapes it too
    assert 'principal="x\ufffd<34>1 forged"'.encode() in msg
