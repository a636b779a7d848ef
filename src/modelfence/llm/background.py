"""One background thread fed by a bounded queue, for checks too slow for the request path
(the distillation test, the semantic leak check): submitting never blocks (a full queue
drops and counts the item), evidence goes back to the event loop, and `drain` waits for
what was queued (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .risk import Observation

T = TypeVar("T")

Sink = Callable[[Observation], None]


class BackgroundWorker(Generic[T]):
    """A subclass names its thread (`THREAD`), offers items with `_offer`, runs `_run` on
    the thread (a `None` item means stop) and reports what it finished with `_finished`.
    `DROP_BACKLOG`: stopping drops what still waits instead of working through it."""

    THREAD = "mf-worker"
    DROP_BACKLOG = False

    def __init__(self, sink: Sink, size: int) -> None:
        self._sink = sink
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self._pending = 0  # queued or in hand (for `drain`)
        self._done = threading.Condition()

    def _offer(self, item: T) -> bool:
        """Queue `item`; False (and counted in `dropped`) when the queue is full."""
        with self._done:
            self._pending += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._done:
                self._pending -= 1
            self.dropped += 1
            return False
        return True

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=self.THREAD, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        while self.DROP_BACKLOG:
            try:
                if self._queue.get_nowait() is not None:
                    with self._done:
                        self._pending -= 1
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        self._thread = None

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued item is processed (tests, benchmarks)."""
        with self._done:
            return self._done.wait_for(lambda: self._pending <= 0, timeout_s)

    def _run(self) -> None:
        raise NotImplementedError

    def _finished(self, n: int) -> None:
        with self._done:
            self._pending -= n
            self._done.notify_all()

    def _deliver(self, obs: Observation) -> None:
        loop = self._loop
        if loop is None:
            self._sink(obs)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed as the gateway stopped
            loop.call_soon_threadsafe(self._sink, obs)
