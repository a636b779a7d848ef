"""External prompt screening: a classifier behind HTTP (generic or Hugging Face answer shape).

An adapter with its own failure modes (unreachable, slow, oversized or malformed answers,
a token file), each turned into a `failed` verdict that `on_error` makes benign or flagged,
and a warning rate-limited so that an outage does not flood the log. aiohttp is imported on
first use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import orjson

from ..redaction import redact_url
from .screening_base import Screener, Verdict, benign
from .screening_settings import ExternalClassifier

# The name it had before the detectors left `screening`: log configurations select it.
log = logging.getLogger("modelfence.llm.screening")

MAX_ANSWER = 1024 * 1024
WARN_EVERY_S = 30.0


class _Failed(Exception):
    """The classifier's answer could not be used; the message is client-safe."""


#: The URL as it may appear in a log line (the one redaction helper of the project).
safe_url = redact_url


def _entries(doc: Any) -> list[tuple[str, float]]:
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], list):
        doc = doc[0]  # [[...]]: one input's list
    items = doc if isinstance(doc, list) else [doc]
    out = []
    for item in items:
        label = item.get("label") if isinstance(item, dict) else None
        score = item.get("score") if isinstance(item, dict) else None
        if not isinstance(label, str) or isinstance(score, bool) or not isinstance(
                score, int | float) or not math.isfinite(score):
            raise _Failed("answer is not {label, score} or a list of them")
        out.append((label, min(max(float(score), 0.0), 1.0)))
    if not out:
        raise _Failed("answer holds no label")
    return out


class ExternalScreener(Screener):
    """A classifier over HTTP (aiohttp, pooled); failures follow `settings.on_error`."""

    source = "external"

    def __init__(self, settings: ExternalClassifier, *, max_chars: int = 8000) -> None:
        super().__init__(max_chars=max_chars)
        self.settings = settings
        self._session: Any = None
        self._token: str | None = None
        self._token_read = False
        self._last_warning = -math.inf
        self._suppressed = 0

    def _client(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_connections,
                                               keepalive_timeout=30),
                skip_auto_headers=("User-Agent",))
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if not self._token_read and self.settings.api_key_file is not None:
            try:
                self._token = self.settings.api_key_file.read_text().strip() or None
            except OSError:
                raise _Failed("its token file cannot be read") from None
        self._token_read = True
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _screen(self, text: str) -> Verdict:
        import aiohttp

        s = self.settings
        try:
            timeout = aiohttp.ClientTimeout(total=s.timeout_s, sock_connect=min(2.0, s.timeout_s))
            body = orjson.dumps({s.text_field: text})
            async with self._client().post(s.url, data=body, headers=self._headers(),
                                           timeout=timeout, allow_redirects=False) as resp:
                data = b""
                while len(data) <= MAX_ANSWER:  # read() gives what is buffered, not all
                    part = await resp.content.read(MAX_ANSWER + 1 - len(data))
                    if not part:
                        break
                    data += part
                if resp.status >= 300:
                    raise _Failed(f"answered {resp.status}")
            if len(data) > MAX_ANSWER:
                raise _Failed("answer is too large")
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise _Failed("answer is not JSON") from None
            return self._verdict(_entries(doc))
        except _Failed as e:
            return self._failed(str(e))
        except TimeoutError:
            return self._failed(f"no answer within {s.timeout_s:g} s")
        except aiohttp.ClientError:
            return self._failed("cannot be reached")

    def _verdict(self, entries: list[tuple[str, float]]) -> Verdict:
        mapped = [(self.settings.labels.get(name.casefold(), "benign"), name, score)
                  for name, score in entries]
        attacks = [e for e in mapped if e[0] != "benign"]
        if not attacks:
            return benign(self.source, "classifier found no attack")
        label, name, score = max(attacks, key=lambda e: e[2])
        shown = "".join(c for c in name if c.isprintable())[:40]
        if score < self.settings.min_score:
            return benign(self.source, f"classifier: {shown} below threshold ({score:.2f})",
                          score=score)
        return Verdict(label, score, self.source, f"classifier: {shown} ({score:.2f})")

    def _failed(self, why: str) -> Verdict:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
            log.warning("prompt classifier %s failed: %s%s", safe_url(self.settings.url), why,
                        more)
            self._last_warning, self._suppressed = now, 0
        else:
            self._suppressed += 1
        reason = f"external classifier failed: {why}"
        if self.settings.on_error == "flag":
            return Verdict("injection", 1.0, self.source, reason, failed=True)
        return Verdict("benign", 0.0, self.source, reason, failed=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)

