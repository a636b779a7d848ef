"""What /metrics refreshes before it answers: the gauges no request moves.

A store's readiness and the monitor's count of flagged callers change without any request
passing through a metric: a breaker opens, an episode's hold runs out. They are measured
when Prometheus asks, so an idle gateway's gauges are as fresh as a busy one's and the
request path pays nothing. Store checks are the readiness checks (bounded, at most one
under way per store); the census is one pass over the callers each monitor keeps.
"""

from __future__ import annotations

from ..kernel.metrics import GatewayMetrics
from ..monitor.service import MonitorService
from .readiness import Readiness


class Scrape:
    def __init__(self, metrics: GatewayMetrics, readiness: Readiness,
                 monitor: MonitorService) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._monitor = monitor

    async def render(self) -> bytes:
        await self._readiness.refresh_stores()
        self._monitor.census()
        return self._metrics.render()
