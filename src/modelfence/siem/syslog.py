"""Findings to a syslog daemon: RFC 5424 messages over TCP, octet-counted (RFC 6587),
TLS when configured (RFC 5425).

The message is the finding's JSON; the structured data element `modelfence@32473` repeats
what a syslog filter most often keys on (kind, ATLAS ids, model, principal, severity), so a
rule needs no JSON parser. 32473 is the private enterprise number RFC 5612 sets aside for
examples: modelfence has none of its own. TCP has no acknowledgement: a message written
just as the daemon dies can be lost. The connection is checked for the daemon's close
before each batch, so a daemon that stopped or restarted between alerts loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from datetime import UTC, datetime
from typing import Any

import orjson

from ..config.siem import SyslogDestination
from ..errors import DeliveryError
from .tls import client_context

SD_ID = "modelfence@32473"
TLS_VERDICT_S = 0.25
#: OCSF severity_id -> syslog severity (2 critical, 3 error, 4 warning, 5 notice, 6 info)
_SEVERITY = {5: 2, 6: 2, 4: 3, 3: 4, 2: 5, 1: 6, 0: 6}


# C0, DEL, C1 (NEL, U+0085, is a line break to some readers) and the Unicode line and
# paragraph separators: none may start a line of its own in a log file or viewer
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


_UNICODE_BREAKS = [(c.encode(), f"\\u{ord(c):04x}".encode()) for c in "\x85\u2028\u2029"]


def sd_escape(value: str) -> str:
    """An SD-PARAM value: `"`, `\\` and `]` escaped (RFC 5424 section 6.3.3), control
    characters replaced, so that a principal's name cannot forge a line in a log file."""
    value = _CONTROL.sub("\ufffd", value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or the nil value."""
    clean = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return clean or "-"


def format_message(doc: dict[str, Any], *, facility: int, app_name: str, hostname: str,
                   procid: int) -> bytes:
    """One RFC 5424 message (without framing) for an OCSF finding."""
    pri = facility * 8 + _SEVERITY.get(int(doc.get("severity_id", 0)), 6)
    ts = datetime.fromtimestamp(doc["time"] / 1000, UTC).isoformat(timespec="milliseconds")
    unmapped = doc.get("unmapped", {})
    params = {"kind": unmapped.get("kind"), "atlas": " ".join(unmapped.get("atlas", [])),
              "severity": doc.get("severity"), "uid": doc.get("metadata", {}).get("uid"),
              "model": next((r["name"] for r in doc.get("resources", [])), None),
              "principal": doc.get("actor", {}).get("user", {}).get("name")}
    sd = "".join(f' {k}="{sd_escape(str(v))}"' for k, v in params.items() if v)
    header = (f"<{pri}>1 {ts.replace('+00:00', 'Z')} {_header_field(hostname, 255)} "
              f"{_header_field(app_name, 48)} {procid} finding [{SD_ID}{sd}] ")
    return header.encode() + _json_one_line(doc)


def _json_one_line(doc: dict[str, Any]) -> bytes:
    """The finding's JSON with NEL and the Unicode line separators escaped too (JSON
    allows them raw inside strings; a reader splitting on them would see a new line)."""
    out = orjson.dumps(doc)
    for raw, escaped in _UNICODE_BREAKS:
        out = out.replace(raw, escaped)
    return out


def frame(message: bytes) -> bytes:
    """Octet-counting framing: the length, a space, the message."""
    return str(len(message)).encode() + b" " + message


class SyslogSender:
    def __init__(self, settings: SyslogDestination) -> None:
        self.name = settings.name
        self._s = settings
        self._ssl = client_context(settings.tls) if settings.tls is not None else None
        self._hostname = socket.gethostname()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def _usable(self) -> bool:
        return (self._writer is not None and self._reader is not None
                and not self._writer.is_closing() and not self._reader.at_eof())

    async def _connect(self) -> asyncio.StreamWriter:
        await self.close()
        s = self._s
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                s.host, s.port, ssl=self._ssl,
                server_hostname=(s.tls.server_name or s.host) if s.tls else None),
                s.timeout_s)
        except TimeoutError:
            raise DeliveryError(f"syslog {s.name}: connect timed out",
                                reason="timeout") from None
        except OSError as exc:
            raise DeliveryError(f"syslog {s.name}: cannot connect: {type(exc).__name__}",
                                reason="unreachable") from None
        if self._ssl is not None:
            await self._verdict(reader, writer)
        self._reader, self._writer = reader, writer
        return writer

    async def _verdict(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Under TLS 1.3 a daemon refuses a client certificate after the handshake, so a
        refused client would write its first batch into a closing connection: wait
        `TLS_VERDICT_S` for the daemon to close before sending on a new connection."""
        try:
            await asyncio.wait_for(reader.read(1), TLS_VERDICT_S)
        except TimeoutError:
            return  # still open: accepted (a syslog daemon sends nothing)
        except OSError:
            pass
        writer.close()
        raise DeliveryError(f"syslog {self.name}: the daemon closed the TLS connection "
                            "(client certificate refused?)", reason="auth")

    async def send(self, records: list[bytes]) -> None:
        # let a close the daemon sent arrive before deciding the connection is usable
        await asyncio.sleep(0)
        writer = self._writer if self._usable() else await self._connect()
        assert writer is not None
        pid = os.getpid()
        data = b"".join(frame(format_message(
            orjson.loads(r), facility=self._s.facility, app_name=self._s.app_name,
            hostname=self._hostname, procid=pid)) for r in records)
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self._s.timeout_s)
        except TimeoutError:
            await self.close()
            raise DeliveryError(f"syslog {self.name}: write timed out",
                                reason="timeout") from None
        except OSError as exc:
            await self.close()
            raise DeliveryError(f"syslog {self.name}: write failed: {type(exc).__name__}",
                                reason="unreachable") from None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
