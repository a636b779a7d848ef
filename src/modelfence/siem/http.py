"""Findings to HTTP collectors: Splunk's HTTP Event Collector and a generic JSON receiver.

A batch is delivered when the collector answers 2xx. 408, 429 and 5xx are retried, and so
are 401 and 403 (a wrong token is fixed by an operator; the alerts wait for it); any other
4xx refuses the alerts themselves and is not retried. A redirect is not followed: the
alerts would go to a host nobody configured. Neither the URL (it may carry a token) nor
the token is logged.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..config.siem import HttpDestination
from ..errors import DeliveryError
from .tls import client_context


def hec_body(records: list[bytes], *, host: str, source: str, sourcetype: str,
             index: str | None) -> bytes:
    """HEC's batch form: event objects one after another, each wrapping a finding."""
    out = []
    for r in records:
        doc = orjson.loads(r)
        event: dict[str, Any] = {"time": doc["time"] / 1000, "host": host, "source": source,
                                 "sourcetype": sourcetype, "event": doc}
        if index is not None:
            event["index"] = index
        out.append(orjson.dumps(event))
    return b"\n".join(out)


def json_body(records: list[bytes]) -> bytes:
    return b"[" + b",".join(records) + b"]"


_MAX_ANSWER = 65536  # bytes of a collector's answer read before the connection is let go

class HttpSender:
    def __init__(self, settings: HttpDestination) -> None:
        self.name = settings.name
        self._s = settings
        token = settings.token()
        self._headers = {"Content-Type": "application/json"}
        if token is not None:
            scheme = "Splunk" if settings.type == "hec" else "Bearer"
            self._headers["Authorization"] = f"{scheme} {token}"
        self._ssl = (client_context(settings.tls)
                     if settings.url.startswith("https://") else None)
        self._where = urlsplit(settings.url).hostname or "?"
        self._host = socket.gethostname()
        self._session: Any = None

    def body(self, records: list[bytes]) -> bytes:
        s = self._s
        if s.type == "hec":
            return hec_body(records, host=self._host, source=s.source,
                            sourcetype=s.sourcetype, index=s.index)
        return json_body(records)

    async def send(self, records: list[bytes]) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._s.timeout_s))
        what = f"{self._s.type} {self.name} ({self._where})"
        try:
            async with self._session.post(self._s.url, data=self.body(records),
                                          headers=self._headers, ssl=self._ssl,
                                          allow_redirects=False) as resp:
                status = resp.status
                # its answer is never needed whole: a collector's body is read to at most
                # 64 KiB (a huge or endless one must not fill memory), the rest dropped
                await resp.content.read(_MAX_ANSWER)
        except TimeoutError:
            raise DeliveryError(f"{what}: timed out", reason="timeout") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{what}: {type(exc).__name__}",
                                reason="unreachable") from None
        if 200 <= status < 300:
            return
        if status in (401, 403):
            raise DeliveryError(f"{what}: answered {status} (check the token)", reason="auth")
        if status in (408, 429) or status >= 500 or 300 <= status < 400:
            raise DeliveryError(f"{what}: answered {status}", reason="status")
        raise DeliveryError(f"{what}: refused the alerts ({status})", reason="rejected",
                            permanent=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
