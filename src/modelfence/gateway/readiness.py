"""Readiness that answers at once, whatever the upstreams do.

Kubernetes asks `/v2/health/ready` every few seconds with a 1 s timeout, and tritonclient
asks `/v2/models/{m}/ready`. Checking every upstream on the request's time made the answer
as slow as the slowest upstream (2 s for a stalled one). Here a request starts the check of
each model and store that is not already under way, waits for those at most
`answer_within_s`, and answers from the last result each check gave: a check still running
(a hung upstream's) keeps its previous answer until it finishes or its own bound
(`probe_timeout_s`) makes it a no, and nobody waits for it. At most one check of each model
or store runs at a time, so callers polling fast cannot multiply the probes an upstream
receives.

`models="any"` (the default): ready while the stores can serve and at least one model can,
so in Kubernetes one dead upstream takes out only its own model (its `/ready` says so), not
the pod and with it every model. `models="all"`: every model must be ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..backends.base import ModelEntry
from ..kernel.tasks import cancel
from ..stores.health import StoreCheck, answers

log = logging.getLogger("modelfence.gateway")

#: the longest a readiness request waits for a round of checks before answering from the last
ANSWER_WITHIN_S = 0.05


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the gateway can serve, and what cannot (models and stores, for operators)."""

    ready: bool
    not_ready: tuple[str, ...]


class Readiness:
    """The last known readiness of each model and store, each kept fresh by its own
    bounded check (at most one under way per model or store)."""

    def __init__(self, models: dict[str, ModelEntry], stores: Sequence[tuple[str, StoreCheck]], *,
                 models_needed: Literal["any", "all"], probe_timeout_s: float,
                 on_model: Callable[[str, bool], None] | None = None,
                 on_store: Callable[[str, bool], None] | None = None,
                 answer_within_s: float = ANSWER_WITHIN_S) -> None:
        self._models = models
        self._stores = dict(stores)
        self._needed = models_needed
        self._probe_timeout_s = probe_timeout_s
        self._on_model = on_model
        self._on_store = on_store
        self._answer_within_s = answer_within_s
        self._models_ok: dict[str, bool] = {}  # absent: never checked yet (not ready)
        self._stores_ok: dict[str, bool] = {}
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._logged: tuple[str, ...] = ()
        self._log_due: asyncio.TimerHandle | None = None

    async def verdict(self) -> Verdict:
        await self.refresh(self._everything())
        return self.known()

    async def model_ready(self, name: str) -> bool:
        await self.refresh([("model", name)] if name in self._models else [])
        return self._models_ok.get(name, False)

    def known(self) -> Verdict:
        """The verdict from the last results, without checking anything."""
        models = [(name, self._models_ok.get(name)) for name in self._models]
        not_ready = [_model_said(name, self._models[name].refused, ok) for name, ok in models
                     if not ok]
        not_ready += [name for name in self._stores if not self._stores_ok.get(name)]
        stores_ok = all(self._stores_ok.get(name) for name in self._stores)
        oks = [bool(ok) for _, ok in models]
        models_ok = all(oks) if self._needed == "all" else (not oks or any(oks))
        return Verdict(stores_ok and models_ok, tuple(not_ready))

    async def refresh_stores(self) -> None:
        """Start each store's check (as a readiness request does) when /metrics is scraped,
        so the stores' gauges move without a readiness probe. Quietly: readiness changes
        are logged by readiness requests' checks, so an outage's lines stay its breaker's."""
        await self.refresh([("store", name) for name in self._stores], quiet=True)

    async def start(self) -> None:
        """Every check once before the first request, so that the first answers know each
        model (bounded: every check is)."""
        started = self._start(self._everything())
        if started:
            await asyncio.wait(started)

    async def refresh(self, which: list[tuple[str, str]], *, quiet: bool = False) -> None:
        """Start the checks of `which` that are not under way; wait for those at most
        answer_within_s. A check already under way (a hung upstream's) is not waited for.
        `quiet` checks do not log a change (the next readiness request's checks will)."""
        started = self._start(which, quiet=quiet)
        if started:
            await asyncio.wait(started, timeout=self._answer_within_s)

    async def close(self) -> None:
        """Stop the checks under way (the app is shutting down)."""
        if self._log_due is not None:
            self._log_due.cancel()
            self._log_due = None
        tasks, self._running = list(self._running.values()), {}
        await cancel(*tasks)

    def _everything(self) -> list[tuple[str, str]]:
        return [*(("model", n) for n in self._models), *(("store", n) for n in self._stores)]

    def _start(self, which: list[tuple[str, str]], *, quiet: bool = False
               ) -> list[asyncio.Task[None]]:
        loop = asyncio.get_running_loop()
        started = []
        for what in which:
            task = self._running.get(what)
            if task is None or task.done() or task.get_loop() is not loop:
                task = self._running[what] = loop.create_task(self._check(*what, quiet))
                started.append(task)
        return started

    async def _check(self, kind: str, name: str, quiet: bool = False) -> None:
        if kind == "store":
            ok = self._stores_ok[name] = await answers(self._stores[name],
                                                       self._probe_timeout_s)
            if self._on_store is not None:
                self._on_store(name, ok)
        else:
            entry = self._models[name]
            ok = entry.refused is None and await answers(entry.backend.ready,
                                                         self._probe_timeout_s)
            self._models_ok[name] = ok
            if self._on_model is not None:
                self._on_model(name, ok)
        if not quiet and self._log_due is None:  # checks ending within a window: one line
            self._log_due = asyncio.get_running_loop().call_later(
                self._answer_within_s, self._log_change)

    def _log_change(self) -> None:
        """Said once per change, with names (the public answer names nothing); from the
        time every model and store has been checked once. Something newly not ready is a
        warning; fewer things not ready (a recovery under way) is information."""
        self._log_due = None
        if len(self._models_ok) < len(self._models) or len(self._stores_ok) < len(self._stores):
            return
        not_ready = self.known().not_ready
        if not_ready == self._logged:
            return
        if not not_ready:
            log.info("ready again")
        elif set(not_ready) <= set(self._logged):
            log.info("still not ready: %s", ", ".join(not_ready))
        else:
            log.warning("not ready: %s", ", ".join(not_ready))
        self._logged = not_ready


def _model_said(name: str, refused: str | None, ok: bool | None) -> str:
    if refused is not None:
        return f"model {name} (refused: {refused})"
    return f"model {name}" if ok is not None else f"model {name} (not checked yet)"
