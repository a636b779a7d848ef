"""What happens when a caller's extraction episode starts: one alert per episode.

A principal whose tenant is flagged by the same observation raises one alert that names both
(`tenant_risk`), not two; a tenant flagged without its principal (evidence spread over keys)
raises a tenant alert (`risk.crossings`, the same for classifier and LLM callers). An alert
(`risk.Alert`) is four things at once: an `alert:monitor` audit record (so
`modelfence alerts`, the admin API and the tamper-evident trail all show it), a Prometheus
counter, a finding for the SIEM (`siem`) and a JSON POST to a webhook. The webhook body is
signed as Stripe and GitHub sign theirs:
``X-Modelfence-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">``, so a receiver
can check origin and reject replays. The URL is never logged (it may carry a token),
and a redirect is not followed: the signed alert would go to a host nobody configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..audit.record import event_record
from ..audit.sinks import AuditSink
from ..config import WebhookSettings
from ..kernel.metrics import GatewayMetrics
from ..risk import Alert

log = logging.getLogger("modelfence.monitor")

SIGNATURE_HEADER = "X-Modelfence-Signature"


def sign(secret: bytes, body: bytes, now: int) -> str:
    mac = hmac.new(secret, f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={now},v1={mac}"


class Webhook:
    """Fire-and-forget POSTs with a timeout; failures are logged and never retried forever."""

    def __init__(self, settings: WebhookSettings, secret: bytes | None, *,
                 on_error: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._secret = secret
        self._on_error = on_error  # counts failed deliveries by kind
        self._host = urlsplit(settings.url).hostname or "?"
        self._session: Any = None
        self._pending: set[asyncio.Task[None]] = set()

    def send(self, payload: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._post(orjson.dumps(payload)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, body: bytes) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s))
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body, int(time.time()))
        try:
            async with self._session.post(self._settings.url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    log.warning("alert webhook to %s answered a redirect (%d); not followed",
                                self._host, resp.status)
                    self._failed("redirect")
                elif resp.status >= 400:
                    log.warning("alert webhook to %s answered %d", self._host, resp.status)
                    self._failed("status")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("alert webhook to %s failed: %s", self._host, type(exc).__name__)
            self._failed("timeout" if isinstance(exc, TimeoutError) else "unreachable")

    def _failed(self, kind: str) -> None:
        if self._on_error is not None:
            self._on_error(kind)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=self._settings.timeout_s)
        if self._session is not None:
            await self._session.close()


class Alerts:
    """Raises one alert on every channel; called only by the replica that saw the crossing."""

    def __init__(self, audit: AuditSink, metrics: GatewayMetrics,
                 webhook: Webhook | None,
                 siem: Callable[[Alert], None] | None = None) -> None:
        self._audit = audit
        self._metrics = metrics
        self._webhook = webhook
        self._siem = siem  # offers the alert to the SIEM destinations, without waiting

    async def raise_alert(self, alert: Alert) -> None:
        self._metrics.monitor_alerts.labels(alert.model, alert.kind).inc()
        log.warning("monitor alert: %s", alert.describe())
        if self._webhook is not None:
            self._webhook.send(alert.to_json())
        if self._siem is not None:
            self._siem(alert)
        principal = alert.subject if alert.kind == "principal" else None
        await self._audit.write(event_record(
            action="alert:monitor", reason=alert.describe()[:1000], principal=principal,
            tenant=alert.tenant, model=alert.model, risk=alert.risk))

    def send(self, payload: dict[str, Any]) -> None:
        if self._webhook is not None:
            self._webhook.send(payload)

    async def close(self) -> None:
        if self._webhook is not None:
            await self._webhook.close()
