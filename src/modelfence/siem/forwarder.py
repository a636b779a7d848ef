"""Alerts to the SIEM: every finding, as OCSF JSON, to each configured destination.

Built once by the gateway from `siem:`; the alert sources call `emit` (or `alert` for the
monitors' `risk.Alert`), which serialises the finding once and offers it to each
destination's outbox without waiting, so raising an alert never slows a request.
"""

from __future__ import annotations

import logging

import orjson

from ..config.siem import HttpDestination, SiemSettings, SyslogDestination
from ..kernel.metrics import GatewayMetrics
from ..risk import Alert
from .finding import Finding, from_risk_alert
from .http import HttpSender
from .ocsf import detection_finding
from .outbox import Outbox, Sender
from .syslog import SyslogSender

log = logging.getLogger("modelfence.siem")


def sender_for(d: SyslogDestination | HttpDestination) -> Sender:
    return SyslogSender(d) if isinstance(d, SyslogDestination) else HttpSender(d)


class Siem:
    def __init__(self, settings: SiemSettings, metrics: GatewayMetrics, *,
                 llm_models: frozenset[str] = frozenset()) -> None:
        self.outboxes = [Outbox(sender_for(d), settings, metrics)
                         for d in settings.destinations]
        self._llm_models = llm_models
        self._started = False

    @property
    def active(self) -> bool:
        return bool(self.outboxes)

    def emit(self, finding: Finding) -> None:
        """Offer a finding to every destination; dropped unless started (a preflight that
        opens the gateway once to check it sends no alert: its workers do)."""
        if not self._started:
            return
        record = orjson.dumps(detection_finding(finding))
        for outbox in self.outboxes:
            outbox.offer(record)

    def alert(self, alert: Alert) -> None:
        """A monitor's alert: the LLM risk book's when its model is served on /v1."""
        self.emit(from_risk_alert(alert, llm=alert.model in self._llm_models))

    async def start(self) -> None:
        started: list[Outbox] = []
        try:
            for outbox in self.outboxes:
                await outbox.start()
                started.append(outbox)
        except BaseException:
            for outbox in started:  # none left running when a later one cannot start
                await outbox.stop()
            raise
        self._started = bool(self.outboxes)
        if self._started:
            log.info("siem: alerts go to %s", ", ".join(o.name for o in self.outboxes))

    def check(self) -> None:
        """What `start` needs, without sending: each spool's folder can be written."""
        for outbox in self.outboxes:
            outbox.check()

    async def flush(self, timeout: float) -> bool:
        return all([await o.flush(timeout) for o in self.outboxes])

    async def stop(self, *, grace_s: float = 0.5) -> None:
        """Alerts still waiting get `grace_s` to be delivered; the rest stay spooled."""
        if self._started:
            await self.flush(grace_s)
            for outbox in self.outboxes:
                await outbox.stop()
            self._started = False
