"""Pins: an operator holds a principal at a stricter output band for a while.

A pin names a model, a principal, a band and when it ends. It never loosens: it is a floor
under the principal's effective risk (the band's start), so the band its risk selects is
never below the pin, and the shaping guard keeps the pin even where a policy's
``@shaping`` annotation chooses a looser band. The request path reads a pin with one
dictionary lookup, and none at all while nothing is pinned.

Every replica must apply a pin to the principal's next answers. With a shared store
(`monitor.shared`) the pins live in one Redis hash that every replica reads every
`REFRESH_S` (the replica that pins applies it at once); alone, a process keeps them in
memory and, with a `state_dir`, in a JSON file that outlives a restart. A pin ends at its
time or when it is removed; one whose store cannot be read keeps the last pins read, so an
outage never lifts a pin early (with a `state_dir`, a replica saves the shared pins it
reads, so one restarted during an outage starts with them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BadRequest, StoreError
from ..kernel.tasks import cancel

log = logging.getLogger("modelfence.monitor")

REFRESH_S = 1.0  # how often a replica reads the shared pins
MAX_PIN_S = 30 * 86_400.0  # the longest a pin may last
_SEP = "\x1f"  # between model and principal in a shared hash's field


@dataclass(frozen=True, slots=True)
class Pin:
    """Who is pinned on which model, to which band (and its start, the risk floor), until
    when (unix seconds), by which admin."""

    model: str
    principal: str
    band: str
    floor: float
    until: float
    by: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Pin:
        data = json.loads(text)
        return cls(str(data["model"]), str(data["principal"]), str(data["band"]),
                   float(data["floor"]), float(data["until"]), str(data["by"]))


class PinBook:
    """The pins of every model, read on the request path, written by the console."""

    def __init__(self, *, shared: str | None = None, prefix: str = "modelfence:monitor:",
                 state_dir: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._pins: dict[tuple[str, str], Pin] = {}
        self._clock = clock
        self._key = f"{prefix}pins"
        self._file = None if state_dir is None else state_dir / "pins.json"
        self._client: Any = None
        if shared is not None:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(shared, socket_timeout=2.0,
                                                        socket_connect_timeout=2.0)
        self._task: asyncio.Task[None] | None = None

    # the request path ------------------------------------------------------------------

    def floor(self, model: str, principal: str) -> float:
        """The risk floor a live pin puts under the principal (0 without one)."""
        if not self._pins:
            return 0.0
        pin = self._pins.get((model, principal))
        if pin is None or pin.until <= self._clock():
            return 0.0
        return pin.floor

    def get(self, model: str, principal: str) -> Pin | None:
        """The principal's live pin on `model`, if any."""
        pin = self._pins.get((model, principal))
        return pin if pin is not None and pin.until > self._clock() else None

    def live(self) -> list[Pin]:
        now = self._clock()
        return [p for p in self._pins.values() if p.until > now]

    # changes (the console) ---------------------------------------------------------------

    async def put(self, pin: Pin) -> None:
        """Pin (or re-pin) a principal; StoreError when the shared store cannot take it."""
        if not 0 < pin.until - self._clock() <= MAX_PIN_S + 1:
            raise BadRequest(f"a pin lasts from 1 s to {int(MAX_PIN_S // 86_400)} days")
        if self._client is not None:
            await self._shared("hset", self._key, _field(pin.model, pin.principal),
                               pin.to_json())
        self._pins[(pin.model, pin.principal)] = pin
        self._save()

    async def remove(self, model: str, principal: str) -> bool:
        """Lift a pin; whether there was one."""
        if self._client is not None:
            await self._shared("hdel", self._key, _field(model, principal))
        found = self._pins.pop((model, principal), None) is not None
        self._save()
        return found

    # lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._file is not None and self._file.exists():
            try:
                self._replace(Pin.from_json(json.dumps(p))
                              for p in json.loads(self._file.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("pins not restored from %s (%s)", self._file, type(exc).__name__)
        if self._client is not None:
            with contextlib.suppress(StoreError):
                await self.refresh()
            self._task = asyncio.ensure_future(self._every())

    async def stop(self) -> None:
        await cancel(self._task)
        if self._client is not None:
            await self._client.aclose()

    async def refresh(self) -> None:
        """Read the shared pins (the replicas' loop; tests call it to skip the wait)."""
        if self._client is None:
            return
        saved = await self._shared("hgetall", self._key)
        now = self._clock()
        pins: list[Pin] = []
        ended: list[Any] = []
        for name, value in saved.items():
            try:
                pin = Pin.from_json(value)
            except (ValueError, KeyError, TypeError):
                log.warning("a shared pin that is not valid JSON was skipped")
                continue
            if pin.until > now:
                pins.append(pin)
            else:
                ended.append(name)
        before = self._pins
        self._replace(pins)
        if self._pins != before:  # kept in state_dir: a restart during an outage keeps them
            self._save()
        if ended:  # every replica may drop them: HDEL of a field gone already is a no-op
            await self._shared("hdel", self._key, *ended)

    async def _every(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
                if failing:
                    log.info("shared pins readable again")
                failing = False
            except StoreError:
                if not failing:
                    log.warning("shared pins cannot be read; the last ones read stay")
                failing = True

    def _replace(self, pins: Any) -> None:
        now = self._clock()
        self._pins = {(p.model, p.principal): p for p in pins if p.until > now}

    async def _shared(self, command: str, *args: Any) -> Any:
        try:
            return await getattr(self._client, command)(*args)
        except Exception as exc:
            raise StoreError(f"the shared pin store did not answer ({type(exc).__name__})",
                             store="pins") from None

    def _save(self) -> None:
        """Keep the live pins in state_dir; a disk that refuses is logged, never raised:
        the pins in memory (and the shared store) still hold, and the refresh loop goes on."""
        if self._file is None:
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            # a temporary file of its own: the workers of one host may share the state_dir
            fd, tmp = tempfile.mkstemp(dir=self._file.parent, prefix=".pins.")
        except OSError as exc:
            log.warning("pins not saved to %s (%s)", self._file, type(exc).__name__)
            return
        try:
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps([asdict(p) for p in self.live()]))
            os.replace(tmp, self._file)
        except OSError as exc:
            log.warning("pins not saved to %s (%s)", self._file, type(exc).__name__)
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _field(model: str, principal: str) -> str:
    return f"{model}{_SEP}{principal}"
