"""How observations reach every replica's monitor, and how its state survives a restart.

With a shared store every observation goes through one Redis stream per model and every
replica applies the stream in its order, its own observations included: all replicas hold
the same state, so a thief alternating between two replicas is caught after the same number
of queries as on one. A snapshot is the state after a known stream position; a replica that
starts loads the newest snapshot and replays the stream from that position, so each
observation counts exactly once (observations trimmed from the stream before a snapshot
covered them are lost, and logged).

Without a shared store (one process) observations are applied at once, and the state is
saved to a file on stop and every `snapshot_interval_s`. Either way a snapshot is encoded by a
forked child from its copy-on-write image of the state (`forked`; elsewhere copied a few dozen
callers at a time and encoded in a worker thread), so requests keep being served while it is
taken (`Monitor.snapshot_async`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..kernel.tasks import cancel

log = logging.getLogger("modelfence.monitor")

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class Observation:
    """One answered request as the monitor sees it: who, which model, rows and answers."""

    model: str
    principal: str
    tenant: str | None
    features: Array  # [n, d] float64
    proba: Array  # [n, k] float64, before output shaping
    ts: float
    origin: str  # the replica that answered, so only it raises the alert

    def encode(self) -> dict[str, bytes | str]:
        n, d = self.features.shape
        return {"o": self.origin, "p": self.principal, "t": self.tenant or "",
                "ts": repr(self.ts), "n": str(n), "d": str(d), "k": str(self.proba.shape[1]),
                "x": np.ascontiguousarray(self.features, dtype="<f8").tobytes(),
                "q": np.ascontiguousarray(self.proba, dtype="<f8").tobytes()}

    @classmethod
    def decode(cls, model: str, f: dict[bytes, bytes]) -> Observation:
        n, d, k = (int(f[key]) for key in (b"n", b"d", b"k"))
        tenant = f[b"t"].decode()
        return cls(model=model, principal=f[b"p"].decode(), tenant=tenant or None,
                   features=np.frombuffer(f[b"x"], dtype="<f8").reshape(n, d),
                   proba=np.frombuffer(f[b"q"], dtype="<f8").reshape(n, k),
                   ts=float(f[b"ts"]), origin=f[b"o"].decode())


#: Applies one observation; `mine` is true on the replica that answered the request.
Apply = Callable[[Observation, bool], None]
#: The state of one model's monitor as bytes (`Monitor.snapshot_async`: the state when it
#: was called, taken without holding the event loop), and how to put it back.
Snapshotter = Callable[[str], Awaitable[bytes]]
Restorer = Callable[[str, bytes], None]


#: A periodic save waits at least this many times as long as the last one took: saving
#: takes at most about a tenth of the gateway's time, whatever the size of the book.
SAVE_SPACING = 10


class ObservationLog(ABC):
    """Delivers observations to `apply` and keeps snapshots of the resulting state."""

    def __init__(self, models: Sequence[str], replica: str, apply: Apply,
                 snapshot: Snapshotter, restore: Restorer, *, interval_s: float) -> None:
        self.models = tuple(models)
        self.replica = replica
        self._apply = apply
        self._snapshot = snapshot
        self._restore = restore
        self._interval_s = interval_s
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._load()
        self._spawn(self._every(self._interval_s, self._save))

    async def stop(self) -> None:
        await cancel(*self._tasks)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self._save()

    @abstractmethod
    async def publish(self, batch: Sequence[Observation]) -> None:
        """Hand observations on; raises `OSError`-like errors when the store is down."""

    def apply_locally(self, batch: Sequence[Observation]) -> None:
        """Apply without the shared store (its fallback when the store fails)."""
        for obs in batch:
            self._apply(obs, True)

    async def ping(self) -> bool:
        return True

    @abstractmethod
    async def _load(self) -> None: ...

    @abstractmethod
    async def _save(self) -> None: ...

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    @staticmethod
    async def _every(seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
        """`fn` every `seconds`, and never sooner than `SAVE_SPACING` times its last run: a
        big book's save (100,000 callers: some 30 s of work on 2 cores) would otherwise run
        back to back and slow every request for as long as the gateway serves."""
        wait = seconds
        while True:
            await asyncio.sleep(wait)
            started = time.monotonic()
            try:
                await fn()
            except Exception as exc:  # a failed snapshot must not stop the next one
                log.warning("monitor snapshot failed: %s", type(exc).__name__)
            wait = max(seconds, SAVE_SPACING * (time.monotonic() - started))


class LocalLog(ObservationLog):
    """One process: apply at once; snapshots are files under `state_dir` (if given)."""

    def __init__(self, *args: Any, state_dir: Path | None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._dir = state_dir

    async def publish(self, batch: Sequence[Observation]) -> None:
        self.apply_locally(batch)

    def _path(self, model: str) -> Path:
        assert self._dir is not None
        return self._dir / f"{model}.monitor-state"

    async def _load(self) -> None:
        if self._dir is None:
            return
        for model in self.models:
            path = self._path(model)
            if not path.exists():
                continue
            try:
                self._restore(model, path.read_bytes())
                log.info("monitor state for %s restored from %s", model, path)
            except (OSError, ConfigurationError) as exc:
                log.warning("monitor state for %s not restored (%s); starting empty", model,
                            exc)

    async def _save(self) -> None:
        if self._dir is None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        for model in self.models:
            data = await self._snapshot(model)
            await asyncio.to_thread(self._write, model, data)  # fsync is no loop's business

    def _write(self, model: str, data: bytes) -> None:
        """Replace the model's state file with `data`, atomically."""
        assert self._dir is not None
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=f".{model}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path(model))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class RedisLog(ObservationLog):
    """Replicas share a Redis stream per model and snapshots next to it."""

    def __init__(self, *args: Any, url: str, stream_max: int, prefix: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        import redis.asyncio

        self.prefix = prefix
        self._url = url
        self._max = stream_max
        self._client = redis.asyncio.Redis.from_url(url, socket_timeout=2.0,
                                                    socket_connect_timeout=2.0)
        # XREAD BLOCK needs a connection whose timeout outlasts the block
        self._reader = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2.0)
        self._position = {m: "0-0" for m in self.models}
        self.ready = asyncio.Event()

    def _stream(self, model: str) -> str:
        return f"{self.prefix}{model}"

    async def publish(self, batch: Sequence[Observation]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for obs in batch:
            pipe.xadd(self._stream(obs.model), obs.encode(),  # type: ignore[arg-type]
                      maxlen=self._max, approximate=True)
        await pipe.execute()

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    async def start(self) -> None:
        await super().start()
        self._spawn(self._consume())

    async def stop(self) -> None:
        await super().stop()
        await self._client.aclose()
        await self._reader.aclose()

    async def _load(self) -> None:
        for model in self.models:
            try:
                saved: Any = await self._client.hgetall(
                    f"{self._stream(model)}:snapshot")
            except Exception as exc:
                raise ConfigurationError(
                    f"monitor.shared: cannot read the monitor state ({type(exc).__name__}); "
                    "is Redis running?") from None
            if not saved:
                continue
            try:
                self._restore(model, saved[b"data"])
                self._position[model] = saved[b"id"].decode()
                log.info("monitor state for %s restored at stream position %s", model,
                         self._position[model])
            except (KeyError, ConfigurationError) as exc:
                log.warning("monitor snapshot for %s not used (%s); replaying the stream",
                            model, exc)

    async def _save(self) -> None:
        # one replica writes per interval: they all hold the same state
        lock = await self._client.set(f"{self.prefix}snapshot-lock", self.replica, nx=True,
                                      ex=max(1, int(self._interval_s)))
        if not lock:
            return
        for model in self.models:
            # the position read before the save begins, by a fork or a capture (no await
            # between them): the state it returns is the state after exactly this position
            position = self._position[model]
            data = await self._snapshot(model)
            await self._client.hset(f"{self._stream(model)}:snapshot", mapping={
                "data": data, "id": position})

    async def _consume(self) -> None:
        """Read the stream for ever; an outage is logged when it starts and when it ends."""
        backoff = 0.5
        failing_since: float | None = None
        while True:
            try:
                await self._read_once()
                backoff = 0.5
                if failing_since is not None:
                    log.info("monitor stream readable again after %.1f s",
                             time.monotonic() - failing_since)
                    failing_since = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("monitor stream read failed (%s); retrying, with a backoff "
                                "up to 10 s, until it answers", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _read_once(self) -> None:
        streams = {self._stream(m): self._position[m] for m in self.models}
        answer: Any = await self._reader.xread(streams, count=500,  # type: ignore[arg-type]
                                               block=1000)
        if not answer:
            self.ready.set()
            return
        for name, entries in answer:
            model = (name.decode() if isinstance(name, bytes) else name)[len(self.prefix):]
            for entry_id, fields in entries:
                try:
                    obs = Observation.decode(model, fields)
                except (KeyError, ValueError) as exc:
                    log.warning("monitor stream entry %r skipped: %s", entry_id, exc)
                else:
                    self._apply(obs, obs.origin == self.replica)
                self._position[model] = entry_id.decode()
