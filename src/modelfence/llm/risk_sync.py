"""LLM risk shared by replicas and kept over restarts, through one Redis stream.

Each replica applies its own observations at once and appends them to the stream; every
replica applies the others' as they arrive, so a thief spreading its requests over
replicas is scored as on one. A replica that starts replays the stream (its last
`stream_max` observations) before it serves: the evidence decays with a half-life, so a
bounded stream of timestamped observations is all the state there is — no snapshots.
Only the replica that answered raises an alert for a crossing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from ..errors import ConfigurationError
from .risk import LlmRiskBook, Observation

log = logging.getLogger("modelfence.llm")


def encode(obs: Observation) -> dict[str, str]:
    return {"m": obs.model, "p": obs.principal, "t": obs.tenant or "", "k": str(obs.tokens),
            "l": "1" if obs.leak else "", "s": obs.screen, "c": repr(obs.screen_score),
            "b": "1" if obs.probe else "", "d": repr(obs.distill), "ts": repr(obs.ts),
            "o": obs.origin, "a": ",".join(obs.asked)}


#: The most output fields one entry may name (a request has a handful).
MAX_ASKED = 16


def decode(fields: dict[bytes, bytes]) -> Observation:
    f = {k.decode(): v.decode() for k, v in fields.items()}
    if not (math.isfinite(float(f["ts"])) and 0.0 <= float(f["c"]) <= 1.0
            and int(f["k"]) >= 0
            and 0.0 <= float(f.get("d", "0.0")) <= 1.0):
        raise ValueError("a number out of range")
    asked = tuple(a for a in f.get("a", "").split(",") if a)  # absent in older entries
    if len(asked) > MAX_ASKED:
        raise ValueError("too many fields asked")
    return Observation(model=f["m"], principal=f["p"], tenant=f["t"] or None,
                       tokens=int(f["k"]), leak=bool(f["l"]), screen=f["s"],
                       screen_score=float(f["c"]), probe=bool(f["b"]),
                       distill=float(f.get("d", "0.0")), ts=float(f["ts"]), origin=f["o"],
                       asked=asked)


class RiskStream:
    """Publishes this replica's observations; applies everyone else's to `book`."""

    def __init__(self, book: LlmRiskBook, *, url: str, key: str, stream_max: int,
                 replica: str) -> None:
        import redis.asyncio

        self._book = book
        self._key = key
        self._max = stream_max
        self.replica = replica
        self._client = redis.asyncio.Redis.from_url(url, socket_timeout=2.0,
                                                    socket_connect_timeout=2.0)
        # XREAD BLOCK needs a connection whose timeout outlasts the block (1 s)
        self._reader = redis.asyncio.Redis.from_url(url, socket_timeout=6.0,
                                                    socket_connect_timeout=2.0,
                                                    socket_keepalive=True)
        self._position = "0-0"
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_warning = 0.0

    async def start(self) -> None:
        """Replay the stream, then follow it; Redis must answer (fail closed at start)."""
        try:
            while await self._read(block=None):
                pass
        except Exception as exc:
            raise ConfigurationError(
                f"llm.monitor.shared: cannot read the shared LLM risk ({type(exc).__name__}); "
                "is Redis running?") from None
        self._spawn(self._follow())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._client.aclose()
        await self._reader.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    def publish(self, obs: Observation) -> None:
        """Append off the request's path; a failure costs the other replicas this one
        observation, and is logged (at most every 10 s)."""
        self._spawn(self._append(obs))

    async def _append(self, obs: Observation) -> None:
        try:
            await self._client.xadd(self._key, encode(obs),  # type: ignore[arg-type]
                                    maxlen=self._max, approximate=True)
        except Exception as exc:
            self._warn(f"could not share an LLM risk observation ({type(exc).__name__})")

    async def _follow(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._read(block=1000)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._warn(f"LLM risk stream read failed ({type(exc).__name__}); retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _read(self, block: int | None) -> int:
        """Apply the next entries (others' only: this replica applied its own at once);
        the number of entries read, applied or not."""
        answer: Any = await self._reader.xread({self._key: self._position}, count=1000,
                                               block=block)
        read = 0
        for _, entries in answer or ():
            for entry_id, fields in entries:
                self._position = entry_id.decode()
                read += 1
                try:
                    obs = decode(fields)
                except (KeyError, ValueError, UnicodeDecodeError) as exc:
                    log.warning("LLM risk stream entry %r skipped: %s", entry_id, exc)
                    continue
                if obs.origin != self.replica and self._book.watches(obs.model):
                    self._book.observe(obs, now=obs.ts, remote=True)
        return read

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning(message)
