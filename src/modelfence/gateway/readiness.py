"""Readiness that answers at once, whatever the upstreams do.

Kubernetes asks `/v2/health/ready` every few seconds with a 1 s timeout, and tritonclient
asks `/v2/models/{m}/ready`. Checking every upstream on the request's time made the answer
as slow as the slowest upstream (2 s for a stalled one). Here a request starts one round of
checks (or joins the round under way), waits for it at most `answer_within_s`, and answers
from the last result each check gave: a check still running keeps its previous answer until
it finishes or its own bound (`probe_timeout_s`) makes it a no. Only one round runs at a
time, so callers polling fast cannot multiply the probes an upstream receives.

`models="any"` (the default): ready while the stores can serve and at least one model can,
so in Kubernetes one dead upstream takes out only its own model (its `/ready` says so), not
the pod and with it every model. `models="all"`: every model must be ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..backends.base import ModelEntry
from ..stores.health import answers

Check = Callable[[], Awaitable[bool]]
log = logging.getLogger("modelfence.gateway")

#: the longest a readiness request waits for a round of checks before answering from the last
ANSWER_WITHIN_S = 0.05


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the gateway can serve, and what cannot (models and stores, for operators)."""

    ready: bool
    not_ready: tuple[str, ...]


class Readiness:
    """The last known readiness of each model and store, kept fresh by bounded rounds."""

    def __init__(self, models: dict[str, ModelEntry], stores: Sequence[tuple[str, Check]], *,
                 models_needed: Literal["any", "all"], probe_timeout_s: float,
                 on_model: Callable[[str, bool], None] | None = None,
                 answer_within_s: float = ANSWER_WITHIN_S) -> None:
        self._models = models
        self._stores = list(stores)
        self._needed = models_needed
        self._probe_timeout_s = probe_timeout_s
        self._on_model = on_model
        self._answer_within_s = answer_within_s
        self._models_ok: dict[str, bool] = {}  # absent: never checked yet (not ready)
        self._stores_ok: dict[str, bool] = {}
        self._round: asyncio.Task[None] | None = None
        self._logged: tuple[str, ...] = ()

    async def verdict(self) -> Verdict:
        await self.refresh()
        return self.known()

    async def model_ready(self, name: str) -> bool:
        await self.refresh()
        return self._models_ok.get(name, False)

    def known(self) -> Verdict:
        """The verdict from the last results, without checking anything."""
        models = [(name, self._models_ok.get(name)) for name in self._models]
        not_ready = [_model_said(name, self._models[name].refused, ok) for name, ok in models
                     if not ok]
        not_ready += [name for name, _ in self._stores if not self._stores_ok.get(name)]
        stores_ok = all(self._stores_ok.get(name) for name, _ in self._stores)
        oks = [bool(ok) for _, ok in models]
        models_ok = all(oks) if self._needed == "all" else (not oks or any(oks))
        return Verdict(stores_ok and models_ok, tuple(not_ready))

    async def start(self) -> None:
        """One whole round before the first request, so that the first answers know each
        model (bounded: every check is)."""
        await asyncio.wait({self._ongoing()})

    async def refresh(self) -> None:
        """Start a round unless one runs in this loop; wait for it at most answer_within_s."""
        await asyncio.wait({self._ongoing()}, timeout=self._answer_within_s)

    def _ongoing(self) -> asyncio.Task[None]:
        task = self._round
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = self._round = asyncio.create_task(self._check_all())
        return task

    async def close(self) -> None:
        """Stop the round under way (the app is shutting down)."""
        task, self._round = self._round, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check_model(name, entry)
                               for name, entry in self._models.items()),
                             *(self._check_store(name, check) for name, check in self._stores))
        self._log_change(self.known().not_ready)

    async def _check_model(self, name: str, entry: ModelEntry) -> None:
        ok = entry.refused is None and await answers(entry.backend.ready,
                                                     self._probe_timeout_s)
        self._models_ok[name] = ok
        if self._on_model is not None:
            self._on_model(name, ok)

    async def _check_store(self, name: str, check: Check) -> None:
        self._stores_ok[name] = await answers(check, self._probe_timeout_s)

    def _log_change(self, not_ready: tuple[str, ...]) -> None:
        """Said once per change, with names: the public answer names nothing."""
        if not_ready == self._logged:
            return
        if not_ready:
            log.warning("not ready: %s", ", ".join(not_ready))
        else:
            log.info("ready again")
        self._logged = not_ready


def _model_said(name: str, refused: str | None, ok: bool | None) -> str:
    if refused is not None:
        return f"model {name} (refused: {refused})"
    return f"model {name}" if ok is not None else f"model {name} (not checked yet)"
