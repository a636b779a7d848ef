"""The monitor inside the gateway: one `Monitor` per model, fed off the request's path.

Requests read a caller's risk with one dictionary lookup (`peek`). Answered requests are queued
(`submit`) and taken in by a background task that publishes them to the observation log (a
shared Redis stream, or this process), which applies them to every replica's monitors; the
replica that answered raises the alert when a principal's or tenant's extraction episode starts
(one alert per episode, see `Crossing`). If the shared store fails, observations are applied
locally so risk keeps rising on this replica (counted in `modelfence_monitor_store_errors`). If
the queue is full, observations are applied on the request's own time rather than dropped: a
flood must not be a way to go unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..audit.record import replica_name
from ..audit.sinks import AuditSink
from ..config import ModelSettings, Settings
from ..errors import ConfigurationError, StoreError
from ..kernel.metrics import GatewayMetrics
from ..kernel.tasks import cancel
from ..risk import Alert, alert_for
from ..stores.breaker import Breaker
from ..stores.outages import redis_outage
from .alerts import Alerts, Webhook
from .pins import PinBook
from .replication import Array, LocalLog, Observation, ObservationLog, RedisLog
from .score import Monitor, Risk
from .score import MonitorSettings as MonitorOptions
from .summary import Summary

log = logging.getLogger("modelfence.monitor")

#: Most observations published in one round trip to the shared store.
BATCH = 256


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose observation it is: the principal's, and its tenant's when the request names one."""

    principal: str
    tenant: str | None


class MonitorService:
    def __init__(self, settings: Settings, audit: AuditSink, metrics: GatewayMetrics, *,
                 siem: Callable[[Alert], None] | None = None) -> None:
        self._settings = settings.monitor
        self._metrics = metrics
        self.monitors: dict[str, Monitor] = {
            m.name: self._monitor_for(m, settings) for m in settings.models
            if m.monitor is not None}
        # (from_risk, name) of the bands of every model with bands, for operators' views
        # and pins: monitored or not, classifier or LLM
        self.pin_bands = pin_bands(settings)
        # at 0 from the start, so that `increase()` sees the first alert: the classifier
        # models it monitors and the LLM models whose risk book raises its alerts here
        alerting = [*self.monitors, *(m.name for m in settings.llm.models
                                      if settings.llm.monitor.enabled)]
        for model in alerting:
            for kind in ("principal", "tenant"):
                metrics.monitor_alerts.labels(model, kind)
        if self.monitors and settings.server.workers > 1 and self._settings.shared is None:
            raise ConfigurationError(
                "monitor: with server.workers > 1 each worker would see only its own share of "
                "a caller's queries; set monitor.shared to a redis:// URL")
        hook = self._settings.webhook
        self._alerts = Alerts(audit, metrics, Webhook(
            hook, settings.webhook_secret(),
            on_error=lambda kind: metrics.outbound_errors.labels("webhook", kind).inc(),
        ) if hook else None, siem)
        self.replica = replica_name()
        common = dict(models=list(self.monitors), replica=self.replica, apply=self._apply,
                      snapshot=self._snapshot, restore=self._restore,
                      interval_s=self._settings.snapshot_interval_s)
        self.log: ObservationLog = (
            RedisLog(**common, url=self._settings.shared, stream_max=self._settings.stream_max,
                     prefix=self._settings.key_prefix)
            if self._settings.shared else LocalLog(**common, state_dir=self._settings.state_dir))
        # operators' pins (the console), on every replica: a floor under a principal's risk
        # and band on any model with bands (classifier, differentially private or LLM), kept
        # in the monitor's shared store, else the LLM risk book's
        shared = self._settings.shared or settings.llm.monitor.shared
        self.pins = PinBook(shared=shared, prefix=self._settings.key_prefix,
                            state_dir=self._settings.state_dir)
        if (self.pin_bands and shared is None and settings.server.workers > 1
                and settings.console.enabled):
            log.warning("pins (console) are kept per worker: with server.workers > 1 set "
                        "monitor.shared to a redis:// URL so that a pin reaches every worker")
        self._queue: asyncio.Queue[Observation] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pending_alerts: set[asyncio.Task[None]] = set()
        # while the shared store is down, observations stay on this replica without a try
        # (and a log line) per batch: the breaker logs the outage once and its end
        self._breaker = Breaker("monitor", "monitor store", self._probe, outage=redis_outage,
                                consequence="observations are applied on this replica only",
                                level=logging.WARNING)

    def _monitor_for(self, model: ModelSettings, settings: Settings) -> Monitor:
        assert model.monitor is not None
        summary = Summary.load(model.monitor.summary)
        where = f"models[{model.name}].monitor"
        if model.input is not None and model.input.shape[-1] not in (-1, summary.n_features):
            raise ConfigurationError(
                f"{where}: the summary has {summary.n_features} features but the model's "
                f"input has {model.input.shape[-1]}; run `modelfence monitor fit` again")
        if model.labels is not None and len(model.labels) != summary.n_classes:
            raise ConfigurationError(
                f"{where}: the summary has {summary.n_classes} classes but the model "
                f"{len(model.labels)} labels")
        detectors = model.monitor.detectors or settings.monitor.detectors
        ms = settings.monitor
        return Monitor(summary, MonitorOptions(
            detectors=tuple(detectors), threshold=ms.threshold,
            max_principals=ms.max_principals, release=ms.release, min_dwell_s=ms.min_dwell_s,
            hold_s=ms.hold_s, sticky=tuple(ms.sticky)))

    # the request's path ----------------------------------------------------------------

    def watches(self, model: str) -> bool:
        return model in self.monitors

    def peek(self, model: str, principal: str, tenant: str | None) -> float:
        """The caller's current risk: the higher of its own and its tenant's (the service
        is the classifier protocol's `risk.RiskSource`)."""
        monitor = self.monitors[model]
        risk = monitor.peek(principal)  # an operator's pin: `risk.PinGuard`, next
        if tenant is not None:
            risk = max(risk, monitor.peek_tenant(tenant))
        return risk

    def send_webhook(self, payload: dict[str, object]) -> None:
        """Other alerts (downloads) go to the same webhook as the monitor's."""
        self._alerts.send(payload)

    def risk(self, model: str, principal: str) -> Risk:
        return self.monitors[model].risk(principal)

    def band(self, model: str, risk: float) -> str | None:
        """The output band `risk` selects on `model` (a policy's pin may choose another)."""
        chosen = None
        for start, name in self.pin_bands.get(model, ()):
            if risk >= start:
                chosen = name
        return chosen

    def bands(self, model: str) -> list[tuple[float, str]]:
        """(from_risk, name) of the model's output bands, lowest risk first."""
        return list(self.pin_bands.get(model, ()))

    def band_counts(self, model: str, scores: Array) -> list[int]:
        """How many of `scores` each of the model's bands holds, lowest band first."""
        return band_counts(self.pin_bands.get(model, []), scores)

    def census(self) -> None:
        """Set the gauges of who is flagged and how many principals each band holds, per
        model: called when /metrics is scraped (one pass over the callers it keeps)."""
        for model, monitor in self.monitors.items():
            risks = list(monitor.standing("principal"))
            scores = np.fromiter((r.score for r in risks), np.float64, len(risks))
            self._metrics.monitor_flagged.labels(model, "principal").set(
                sum(r.flagged for r in risks))
            self._metrics.monitor_flagged.labels(model, "tenant").set(
                sum(r.flagged for r in monitor.standing("tenant")))
            for (_, name), n in zip(self.bands(model), self.band_counts(model, scores),
                                    strict=True):
                self._metrics.monitor_band.labels(model, name).set(n)

    def tenant_risk(self, model: str, tenant: str) -> Risk:
        return self.monitors[model].tenant_risk(tenant)

    def submit(self, model: str, who: Subject, features: Array, proba: Array) -> None:
        """Queue an answered request; never blocks, never raises for a full queue."""
        obs = Observation(model=model, principal=who.principal, tenant=who.tenant,
                          features=np.asarray(features, dtype=np.float64),
                          proba=np.asarray(proba, dtype=np.float64), ts=time.time(),
                          origin=self.replica)
        if self._queue is None:
            self.log.apply_locally([obs])
            return
        try:
            self._queue.put_nowait(obs)
        except asyncio.QueueFull:
            self.log.apply_locally([obs])
            self._metrics.monitor_store_errors.inc()
        self._metrics.monitor_backlog.set(self._queue.qsize())

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.pin_bands:
            await self.pins.start()
        if not self.monitors:
            return
        await self.log.start()
        self._queue = asyncio.Queue(maxsize=self._settings.queue_max)
        self._worker = asyncio.ensure_future(self._drain())

    async def stop(self) -> None:
        if self._worker is not None:
            assert self._queue is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=5.0)
            await cancel(self._worker)
        await self._breaker.close()
        if self.monitors:
            await self.log.stop()
        if self.pin_bands:
            await self.pins.stop()
        if self._pending_alerts:
            await asyncio.wait(self._pending_alerts, timeout=5.0)
        await self._alerts.close()

    async def ping(self) -> bool:
        return not self._breaker.is_open and await self.log.ping()

    async def _probe(self) -> None:
        if not await self.log.ping():
            raise ConnectionError("monitor store did not answer")

    async def _drain(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._breaker.run(functools.partial(self.log.publish, batch),
                                        timeout_s=5.0)
            except StoreError:
                self._metrics.monitor_store_errors.inc()
                self.log.apply_locally(batch)
            finally:
                for _ in batch:
                    queue.task_done()
                self._metrics.monitor_backlog.set(queue.qsize())

    # applying observations (called by the log, on every replica) ------------------------

    def _apply(self, obs: Observation, mine: bool) -> None:
        monitor = self.monitors.get(obs.model)
        if monitor is None:
            return
        started = time.perf_counter()
        try:
            crossings = monitor.observe(obs.principal, obs.features, obs.proba,
                                        tenant=obs.tenant, now=obs.ts)
        except ConfigurationError as exc:
            log.warning("monitor for %s skipped an observation: %s", obs.model, exc)
            return
        self._metrics.monitor_observe.observe(time.perf_counter() - started)
        if not mine:
            return
        for crossing in crossings:
            self.raise_alert(alert_for(obs.model, crossing))

    def raise_alert(self, alert: Alert) -> None:
        """Audit record, metric, log line and webhook, off the caller's path (the LLM
        routes' risk book raises its alerts here too)."""
        task = asyncio.ensure_future(self._alerts.raise_alert(alert))
        self._pending_alerts.add(task)
        task.add_done_callback(self._pending_alerts.discard)

    async def _snapshot(self, model: str) -> bytes:
        return await self.monitors[model].snapshot_async()

    def _restore(self, model: str, data: bytes) -> None:
        self.monitors[model].restore(data)


def rows_of(values: Array) -> Array:
    """A request's first input as [n, features]: how the monitor sees a batch."""
    x = np.asarray(values, dtype=np.float64)
    return x.reshape(len(x), -1) if x.ndim != 1 else x.reshape(1, -1)


def band_counts(bands: list[tuple[float, str]], scores: Array) -> list[int]:
    """How many of `scores` each band holds, lowest band first (a score's band is the last
    whose start it reaches, as `MonitorService.band` chooses)."""
    at = np.searchsorted([start for start, _ in bands], scores, side="right") - 1
    return [int(n) for n in np.bincount(at[at >= 0], minlength=len(bands))]


def pin_bands(settings: Settings) -> dict[str, list[tuple[float, str]]]:
    """(from_risk, name) of the bands of every model an operator may pin a principal on:
    classifiers' output bands (private ones included) and LLM models' control bands, whose
    base controls are the band "default" from risk 0."""
    out = {m.name: [(b.from_risk, b.name or b.defense) for b in m.shaping]
           for m in settings.models if m.shaping}
    for llm in settings.llm.models:
        if llm.bands:
            out[llm.name] = [(0.0, "default"), *((b.from_risk, b.name) for b in llm.bands)]
    return out
