"""What a client is told when an upstream model server answers with an error status.

One mapping for the OIP and the OpenAI-compatible paths, so that both tell a client the
same thing for the same upstream answer:

- 3xx: 502, never followed (the redirected request would carry the inputs, and for an LLM
  the upstream API key, somewhere the configuration never named);
- 401, 403, 407: 502 "refused the gateway": they are about the gateway's own credentials,
  and passing them through would make a client think its own key was refused;
- 429: 503 with Retry-After (`busy`);
- any other 4xx: the same status, with the upstream's reason made public (`public_reason`):
  the upstream's text can name the hidden `upstream_model`, the upstream's address, its
  files or echo the request it was sent (with the gateway's canary in it);
- 5xx and anything else: 502 without the body (MLServer answers 500 with a traceback).

The upstream's own words, bounded and printable, go to the log with its redacted URL.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from typing import Any

import orjson

from ..errors import RequestError, Unavailable, UpstreamError, UpstreamRejected

log = logging.getLogger("modelfence.upstream")

#: Upstream answers about the gateway's own access, not the client's request.
GATEWAY_FAULTS = frozenset({401, 403, 407})
#: Retry-After when a busy upstream gives none, and the most passed along (seconds).
BUSY_RETRY_S = 5
MAX_RETRY_S = 3600
MAX_REASON_CHARS = 300

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_HOST_PORT = re.compile(r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|[a-zA-Z0-9-]*[a-zA-Z][a-zA-Z0-9-]*"
                        r"(?:\.[a-zA-Z0-9-]+)*):\d{2,5}\b")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_PATH = re.compile(r"(?<![\w.:/])(?:~|[a-zA-Z]:)?(?:[/\\][\w.@+-]+){2,}[/\\]?")
_KEY = re.compile(r"\b(?:sk|pk|rk|hf)[-_][A-Za-z0-9_-]{16,}")
#: pydantic's echo of the value it refused (`input_value={...}, input_type=dict`): the
#: request as the gateway sent it, system prompt and canary included.
_ECHO = re.compile(r"input_value=.*?(?=, input_type=|\]|$)", re.DOTALL)


def upstream_failure(status: int, body: bytes, *, model: str, upstream_model: str,
                     where: str, retry_after: str | None = None,
                     request_id: str | None = None) -> RequestError:
    """The error a client gets for an upstream's non-2xx answer (to raise); the details,
    the upstream's own text included, are logged here against `where` (a redacted URL) and
    the `request_id` the upstream was sent, to find the same request in its logs."""
    detail = upstream_text(body)
    said = f": {detail}" if detail else ""
    which = f"{model}, request id {request_id}" if request_id else model  # for the log
    if 300 <= status < 400:
        log.warning("upstream %s answered a redirect (%d); not followed (model %s)", where,
                    status, which)
        return UpstreamError("the upstream model server answered with a redirect, which "
                             "the gateway does not follow", reason="upstream_redirect")
    if status in GATEWAY_FAULTS:
        log.warning("upstream %s answered %d to the gateway (model %s)%s", where, status,
                    which, said)
        return UpstreamError(f"the upstream model server refused the gateway (status {status})")
    if status == 429:
        wait = retry_after_s(retry_after)
        log.warning("upstream %s is busy (429, retry after %d s) (model %s)%s", where, wait,
                    which, said)
        return busy(wait)
    if 400 <= status < 500:
        log.info("upstream %s refused a request (%d) (model %s)%s", where, status, which, said)
        reason = public_reason(detail, model=model, upstream_model=upstream_model)
        return UpstreamRejected(status, f"the upstream model server refused the request "
                                        f"(status {status})" + (f": {reason}" if reason else ""))
    log.warning("upstream %s failed with status %d (model %s)%s", where, status, which, said)
    return UpstreamError(f"the upstream model server failed (status {status})")


def busy(retry_after_s: int) -> Unavailable:
    """An upstream 429 as the client sees it: 503 with Retry-After.

    An upstream's 429 is about its capacity, or the quota of the gateway's own upstream
    account, shared by every caller: not about this caller's use. A 429 would tell the
    client that its own quota is spent (the red-team CLI, for one, stops an attack there as
    if a defence had worked) and count as the caller's rate limit; a 502 would say the
    upstream is broken and drop the upstream's hint of when to come back. 503 is HTTP's
    "temporarily unable to handle the request", and its Retry-After carries that hint.
    """
    return Unavailable("the upstream model server is busy; retry later",
                       retry_after_s=retry_after_s, reason="upstream_busy")


def retry_after_s(value: str | None) -> int:
    """An upstream's Retry-After (seconds or an HTTP date) as whole seconds, within
    [1, MAX_RETRY_S]; `BUSY_RETRY_S` when it sent none or one that cannot be read."""
    if value is None:
        return BUSY_RETRY_S
    value = value.strip()
    seconds: float
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return BUSY_RETRY_S
        if when is None:
            return BUSY_RETRY_S
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return BUSY_RETRY_S
    return int(min(MAX_RETRY_S, max(1, math.ceil(seconds))))


def upstream_text(body: bytes) -> str:
    """The upstream's error message, printable and bounded; "" when it sent none that can
    be read (a body that is not JSON may be a traceback or an HTML page: never read).

    Reads the shapes servers use: OpenAI's ``{"error": {"message"}}``, MLServer's and
    KServe's ``{"error": "..."}``, FastAPI's ``{"detail": "..." | [{"loc", "msg"}]}``
    and a bare ``{"message"}``.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(doc, dict):
        return ""
    raw: Any = doc.get("error") or doc.get("detail") or doc.get("message") or ""
    if isinstance(raw, dict):
        raw = raw.get("message") or raw.get("msg") or ""
    if isinstance(raw, list):
        raw = "; ".join(_item(i) for i in raw[:5])
    if not isinstance(raw, str):
        return ""
    return _printable(raw, 2 * MAX_REASON_CHARS)


def public_reason(text: str, *, model: str, upstream_model: str) -> str:
    """`text` fit for the client: the upstream's model name said as the gateway's, and its
    addresses, file paths, key-like tokens and echoed request left out; bounded."""
    if upstream_model and upstream_model != model:
        # the whole name first, then its last part alone (`org/name` said as `name`)
        for hidden in dict.fromkeys((upstream_model, upstream_model.rsplit("/", 1)[-1])):
            text = re.sub(rf"(?<![\w.-]){re.escape(hidden)}(?![\w-])", lambda _: model, text)
    text = _ECHO.sub("input_value=…", text)
    text = _URL.sub("<address>", text)
    text = _HOST_PORT.sub("<address>", text)
    text = _IPV4.sub("<address>", text)
    text = _PATH.sub("<path>", text)
    text = _KEY.sub("<redacted>", text)
    text = " ".join(text.split())
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS - 1] + "…"
    return text


def _item(item: Any) -> str:
    """One FastAPI validation error, ``body.inputs: field required``."""
    if not isinstance(item, dict):
        return str(item) if isinstance(item, str) else ""
    msg = item.get("msg")
    loc = item.get("loc")
    where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
    if not isinstance(msg, str):
        return where
    return f"{where}: {msg}" if where else msg


def _printable(text: str, limit: int) -> str:
    return "".join(c if c.isprintable() else " " for c in text[:limit]).strip()
