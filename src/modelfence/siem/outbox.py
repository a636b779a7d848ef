"""One destination's delivery: alerts offered in memory, spooled to disk, sent in batches.

`offer` never waits: it puts the alert on a bounded queue (a full queue drops the alert
and counts it, rather than slow the request that raised it). A task moves queued alerts
into the spool, then sends the oldest batch; a batch leaves the spool only once the
collector took it. A failed send is retried after a wait that doubles from
`retry_initial_s` to `retry_max_s`, with jitter so that replicas do not retry in step;
alerts raised meanwhile are spooled as they come. A collector that refuses a batch itself
(a 4xx other than 401, 403, 408, 429) has it dropped and counted as `rejected`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Protocol

from ..config.siem import SiemSettings
from ..errors import ConfigurationError, DeliveryError
from ..kernel.metrics import GatewayMetrics
from ..kernel.tasks import cancel
from .spool import PRIVATE_DIR, Spool

log = logging.getLogger("modelfence.siem")


class Sender(Protocol):
    name: str

    async def send(self, records: list[bytes]) -> None: ...

    async def close(self) -> None: ...


def backoff(attempt: int, initial: float, most: float, rand: random.Random) -> float:
    """The wait after the `attempt`-th failure in a row: doubling, capped, jittered to
    between half and all of it."""
    full = min(most, initial * 2.0 ** min(attempt - 1, 30))
    return full * (0.5 + 0.5 * rand.random())


class Outbox:
    def __init__(self, sender: Sender, settings: SiemSettings, metrics: GatewayMetrics) -> None:
        self.name = sender.name
        self._sender = sender
        self._s = settings
        self._metrics = metrics
        self.spool = Spool(settings.spool_dir / sender.name, settings.spool_max_bytes,
                           fsync=settings.fsync, on_drop=self._dropped)
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(settings.queue_max)
        self._task: asyncio.Task[None] | None = None
        self._rand = random.Random()  # noqa: S311 - jitter, not a secret
        self._idle = asyncio.Event()  # set while nothing waits: for `flush`
        self.last_error: str | None = None  # the latest failed send's, until one succeeds

    def offer(self, record: bytes) -> None:
        try:
            self._queue.put_nowait(record)
            self._idle.clear()
        except asyncio.QueueFull:
            self._metrics.siem_undelivered.labels(self.name, "queue_full").inc()

    def _dropped(self, n: int) -> None:
        log.warning("siem %s: spool full, %d oldest alerts dropped", self.name, n)
        self._metrics.siem_undelivered.labels(self.name, "spool_full").inc(n)

    def _refused(self, exc: OSError) -> ConfigurationError:
        return ConfigurationError(f"siem destination {self.name}: cannot open its spool in "
                                  f"{self.spool.folder}: {exc.strerror}")

    def check(self) -> None:
        try:
            self.spool.folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._refused(exc) from None
        if not os.access(self.spool.folder, os.W_OK | os.X_OK):
            raise ConfigurationError(f"siem destination {self.name}: cannot write its spool "
                                     f"in {self.spool.folder}")

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.spool.open)
        except OSError as exc:
            raise self._refused(exc) from None
        self._gauge()
        self._task = asyncio.create_task(self._run(), name=f"siem-{self.name}")

    def _gauge(self) -> None:
        self._metrics.siem_spool_bytes.labels(self.name).set(self.spool.pending_bytes)

    def _drain(self) -> list[bytes]:
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    async def _spool(self, records: list[bytes]) -> None:
        if records:
            await asyncio.to_thread(self.spool.append, records)
            self._gauge()

    async def _take(self) -> None:
        """Queued alerts into the spool; waits for one when nothing is waiting at all."""
        records = self._drain()
        if not records and not len(self.spool):
            self._idle.set()
            records = [await self._queue.get(), *self._drain()]
        await self._spool(records)

    async def _pause(self, seconds: float) -> None:
        """Wait before a retry, spooling alerts that arrive meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                first = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                return
            await self._spool([first, *self._drain()])

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._take()
            batch = self.spool.peek(self._s.max_batch)
            try:
                await self._send(batch)
            except DeliveryError as exc:
                if exc.permanent:
                    log.warning("siem %s: %s; %d alerts dropped", self.name, exc, len(batch))
                    self._metrics.siem_undelivered.labels(self.name, "rejected").inc(len(batch))
                else:
                    failures += 1
                    self.last_error = str(exc)
                    self._metrics.siem_failures.labels(self.name, exc.reason).inc()
                    wait = backoff(failures, self._s.retry_initial_s, self._s.retry_max_s,
                                   self._rand)
                    if failures == 1 or failures % 20 == 0:
                        log.warning("siem %s: %s (%d alerts waiting; retry %d in %.1f s)",
                                    self.name, exc, len(self.spool), failures, wait)
                    await self._pause(wait)
                    continue
            else:
                if failures:
                    log.info("siem %s: delivering again after %d failed tries",
                             self.name, failures)
                failures, self.last_error = 0, None
                self._metrics.siem_delivered.labels(self.name).inc(len(batch))
            await asyncio.to_thread(self.spool.ack, len(batch))
            self._gauge()

    async def _send(self, batch: list[bytes]) -> None:
        """The sender's send; anything it did not foresee is a failure to retry, so the
        destination's task never ends while the gateway runs."""
        try:
            await self._sender.send(batch)
        except (DeliveryError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("siem %s: sending failed unexpectedly", self.name)
            raise DeliveryError(f"unexpected {type(exc).__name__}", reason="error") from None

    async def flush(self, timeout: float) -> bool:
        """Wait until every offered alert was delivered (or dropped); False on timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            while True:
                await asyncio.wait_for(self._idle.wait(), max(0.0, end - loop.time()))
                if self._queue.empty() and not len(self.spool):
                    return True
                await asyncio.sleep(0.01)
        except TimeoutError:
            return False

    async def stop(self) -> None:
        """Alerts not delivered stay in the spool for the next start (or another process)."""
        if self._task is not None:
            await cancel(self._task)
            self._task = None
            await self._spool(self._drain())
        await asyncio.to_thread(self.spool.close)
        await self._sender.close()
