"""Artifact downloads: a policy-checked, audited route, and an insider alert on unusual ones.

`GET /v2/models/{name}/artifact` hands an authorised principal (a team that deploys the model
elsewhere) the model file as it rests on disk — encrypted, if it is encrypted at rest. It runs
the same chain as inference (identity, model, policy with the `artifact-download` action, rate
limits, audit), so the default policy set, which permits no downloads, refuses it.

`DownloadWatch` raises an `alert:download` when a principal downloads more than its own
history and its peers suggest, or at an hour it has never downloaded at:

- volume: more downloads in the last 24 h than max(3, 3 x its median daily count over the
  previous 30 days, the busiest day any peer had in that time);
- hours: with at least 5 earlier downloads, one at a UTC hour at least 2 hours away from every
  hour it used before.

Its history is the audit log itself (read back at start when the log is queryable) plus what
this process saw, so a restart does not forget it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ..audit.store import AuditStore, Query
from ..backends.call import OipCall
from ..config import LocalBackend
from ..errors import NotFound
from ..kernel.call import Call
from ..kernel.chain import Guard, GuardChain, Terminal

log = logging.getLogger("modelfence.downloads")

ACTION = "artifact-download"
DAY_S = 86_400
HISTORY_DAYS = 30

AlertSink = Callable[[str, str, str | None, str], Awaitable[None]]  # principal, tenant, model, why


@dataclass(slots=True)
class ArtifactCall(OipCall):
    """A download's call: an OIP model's, with the artifact file it answers with."""

    artifact: Path | None = None


Answer = Callable[[ArtifactCall, GuardChain[ArtifactCall], Terminal[ArtifactCall],
                   Callable[[ArtifactCall], Response]], Awaitable[Response]]


@dataclass
class History:
    """One principal's downloads: timestamps of the last 30 days (bounded by that window)."""

    times: list[float] = field(default_factory=list)

    def add(self, ts: float) -> None:
        self.times.append(ts)
        cutoff = ts - HISTORY_DAYS * DAY_S
        if self.times[0] < cutoff:
            self.times = [t for t in self.times if t >= cutoff]

    def daily_counts(self, before: float) -> list[int]:
        counts: dict[int, int] = defaultdict(int)
        for t in self.times:
            if t < before:
                counts[int(t // DAY_S)] += 1
        return list(counts.values())


def _hour(ts: float) -> int:
    return datetime.fromtimestamp(ts, UTC).hour


class DownloadWatch(Guard[Call]):
    """Counts each answered download and says when one looks like an insider taking weights."""

    name: ClassVar[str] = "download_watch"

    def __init__(self, alert: AlertSink) -> None:
        self._alert = alert
        self._history: dict[str, History] = defaultdict(History)

    def record(self, principal: str, ts: float) -> None:
        self._history[principal].add(ts)

    async def load(self, store: AuditStore) -> None:
        """Seed the history from the audit log's downloads of the last 30 days."""
        since = int((time.time() - HISTORY_DAYS * DAY_S) * 1e6)
        rows = await store.select(Query(action_prefix=ACTION, since_us=since, limit=100_000))
        for row in rows:
            if row.principal and row.status == 200:
                self.record(row.principal, row.ts_us / 1e6)

    def unusual(self, principal: str, ts: float) -> str | None:
        """Why this download (already recorded) is unusual, or None."""
        mine = self._history[principal]
        recent = sum(1 for t in mine.times if t > ts - DAY_S)
        past = sorted(mine.daily_counts(before=ts - DAY_S))
        median = past[len(past) // 2] if past else 0
        peers = max((max(h.daily_counts(before=ts + 1), default=0)
                     for p, h in self._history.items() if p != principal), default=0)
        limit = max(3, 3 * median, peers)
        if recent > limit:
            return (f"{recent} downloads in 24 h (its median day {median}, busiest peer day "
                    f"{peers}, limit {limit})")
        earlier = [t for t in mine.times if t < ts]
        if len(earlier) >= 5:
            hours = {_hour(t) for t in earlier}
            hour = _hour(ts)
            if all(min((hour - h) % 24, (h - hour) % 24) >= 2 for h in hours):
                return (f"a download at {hour:02d}h UTC; its earlier downloads were at "
                        f"{', '.join(f'{h:02d}h' for h in sorted(hours))}")
        return None

    async def on_complete(self, call: Call) -> None:
        if call.status != 200 or call.principal is None:
            return
        p = call.principal
        self.record(p.id, call.received_at)
        why = self.unusual(p.id, call.received_at)
        if why is not None:
            await self._alert(p.id, p.tenant, call.model_name, why)


class DownloadRoutes:
    """The download route; `answer` is the OIP routes' (the same strict-audit handling)."""

    def __init__(self, chain: GuardChain[ArtifactCall], answer: Answer) -> None:
        self._chain = chain
        self._answer = answer

    def routes(self) -> list[Route]:
        return [Route("/v2/models/{name}/artifact", self.download, methods=["GET"])]

    @staticmethod
    async def _locate(call: ArtifactCall) -> None:
        assert call.model is not None
        backend = call.model.settings.backend
        if not isinstance(backend, LocalBackend) or not Path(backend.path).is_file():
            raise NotFound(f"model {call.model.name!r} has no artifact file at this gateway")
        call.artifact = Path(backend.path)

    @staticmethod
    def _file(call: ArtifactCall) -> Response:
        path = call.artifact
        assert path is not None
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")

    async def download(self, request: Request) -> Response:
        call = ArtifactCall(request, ACTION, request.path_params["name"])
        return await self._answer(call, self._chain, self._locate, self._file)
