"""Whether a signed console session is still live: not logged out, its credential still there.

A console cookie is stateless: its signature proves who logged in and until when, on every
worker and replica alike, but not that the session has not ended since. Two things end one
before its expiry, and `SessionGate` checks both before any console page or action runs:

* **logout**, anywhere. `EndedSessions` reads the ends from the audit log itself: the
  `console:logout` record names the session (`session:<hash of its id>`, never the cookie)
  as its target. The audit log is the deliberate choice: every worker and replica already
  shares it (one chain, in SQLite on one machine or PostgreSQL for replicas), the console
  already refuses to log anyone in while it cannot record, the logout record is written
  anyway, and it is tamper-evident: an end cannot be quietly deleted to revive a cookie.
  Redis would be one more store to run, share and keep up for the same answer. The check
  is one query on the `(action, seq)` index for the logouts after the newest this process
  has read, usually none; ends already read are kept in memory (a positive answer never
  changes) until the session they ended has expired anyway. A logout answers only once
  its record can be read back from the store, so a cookie replayed after the answer is
  refused by every worker. With an audit sink that cannot be queried (jsonl, log, none),
  ends live in this process only, which the gateway allows with one worker only.
* **its credential leaving the configuration** (an admin token removed or rotated, its
  grant changed, the OIDC admins switched off): the session carries a keyed fingerprint of
  the credential it matched and `bound` says whether one with that fingerprint is still
  configured. Configuration is read when a worker starts, so this is a set lookup.

Fail closed: a request whose session cannot be checked because the audit store does not
answer gets a 503 page and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..audit.store import AuditStore, Query
from ..errors import StoreError
from .kit import ConsoleKit, to_login
from .session import COOKIE_NAME, ConsoleSession, clear_cookie_header

log = logging.getLogger("modelfence.console")
LOGOUT = "console:logout"
TARGET = "session:"
_PAGE = 500
_READ_S = 2.0  # longest a page waits for the audit store before it answers 503
_SETTLE_S = 5.0  # longest a logout waits to read its own record back
_SKEW_S = 600  # replicas' clocks may differ: an end is kept this much longer than needed
Endpoint = Callable[[Request], Awaitable[Response]]


class EndedSessions:
    """Console sessions ended by logout: read from the audit log's `console:logout` records
    (`store`), or kept in this process when the audit sink cannot be queried."""

    def __init__(self, store: AuditStore | None, *, keep_s: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        # a session lasts at most keep_s: after that (and the clocks' skew) its end is moot
        self._keep_s = keep_s + _SKEW_S
        self._clock = clock
        self._ended: dict[str, float] = {}  # hash of a session id -> when to forget it
        self._after: int | None = None  # the newest logout record read
        self._lock = asyncio.Lock()

    @property
    def shared(self) -> bool:
        """Whether every worker and replica sharing the audit store sees these ends."""
        return self._store is not None

    def target(self, session: ConsoleSession) -> str:
        """The logout record's target naming `session`."""
        return TARGET + session.ended_id

    async def ended(self, session: ConsoleSession) -> bool:
        """Whether `session` was logged out; StoreError when the audit store cannot say."""
        if session.ended_id in self._ended:
            return True
        if self._store is None:
            return False
        await self._refresh(self._store)
        return session.ended_id in self._ended

    async def end(self, session: ConsoleSession) -> bool:
        """After the logout record was written: whether its end can be read back (so every
        worker will refuse the cookie) within a few seconds."""
        if self._store is None:
            self._ended[session.ended_id] = self._clock() + self._keep_s
            return True
        deadline, pause = time.monotonic() + _SETTLE_S, 0.01
        while True:
            try:
                if await self.ended(session):
                    return True
            except StoreError:
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    async def _refresh(self, store: AuditStore) -> None:
        try:
            await asyncio.wait_for(self._read(store), _READ_S)
        except TimeoutError:
            raise StoreError("the audit store did not answer in time",
                             store="audit") from None

    async def _read(self, store: AuditStore) -> None:
        """The logouts after the newest already read: one range of the (action, seq) index."""
        async with self._lock:
            now = self._clock()
            if self._after is not None:
                query, after = Query(action=LOGOUT, after_seq=self._after, limit=_PAGE), 0
            else:  # first read: the logouts of the last session lifetime, then from the head
                after = (await store.head()).seq
                query = Query(action=LOGOUT, since_us=int((now - self._keep_s) * 1e6),
                              limit=_PAGE)
            while True:
                rows = await store.select(query)
                for row in rows:
                    target = orjson.loads(row.payload).get("key_id")
                    if isinstance(target, str) and target.startswith(TARGET):
                        self._ended[target[len(TARGET):]] = row.ts_us / 1e6 + self._keep_s
                after = max(after, rows[-1].seq if rows else 0, self._after or 0)
                if len(rows) < _PAGE:
                    break
                query = replace(query, after_seq=rows[-1].seq)
            self._after = after
            for ended in [k for k, forget in self._ended.items() if forget < now]:
                del self._ended[ended]


class SessionGate:
    """Runs before every console page and action: a signed session whose credential is gone
    or that was logged out goes to the login page (its cookie cleared); one that cannot be
    checked gets 503. Requests without a valid signature go on: each page sends them to
    the login page itself."""

    def __init__(self, kit: ConsoleKit, ended: EndedSessions,
                 bound: Callable[[ConsoleSession], bool]) -> None:
        self._kit = kit
        self.ended = ended
        self._bound = bound

    def wrap(self, routes: list[BaseRoute]) -> list[BaseRoute]:
        """`routes` with the check in front of each (a route of another kind is refused:
        it would run unchecked)."""
        out: list[BaseRoute] = []
        for route in routes:
            if not isinstance(route, Route):
                raise TypeError(f"console route {route!r} cannot be checked for live sessions")
            out.append(Route(route.path, self._checked(route.endpoint), methods=route.methods,
                             name=route.name))
        return out

    def _checked(self, endpoint: Endpoint) -> Endpoint:
        async def run(request: Request) -> Response:
            refused = await self.refusal(request)
            return refused if refused is not None else await endpoint(request)

        return run

    async def refusal(self, request: Request) -> Response | None:
        """The answer instead of the page, or None when the session is live (or absent)."""
        session = self._kit.signed_in(request)
        if session is None:
            return None
        if not self._bound(session):
            log.info("console session of %s refused: its credential is no longer configured",
                     session.admin)
            return self._gone(request)
        try:
            ended = await self.ended.ended(session)
        except StoreError as exc:
            log.warning("console request refused: sessions cannot be checked: %s", exc)
            return self._kit.render(
                "denied.html", 503, session=None, title="Unavailable",
                message="the console cannot check sessions now: the audit log does not "
                        "answer; retry shortly")
        if ended:
            return self._gone(request)
        return None

    def _gone(self, request: Request) -> Response:
        response = to_login()
        if COOKIE_NAME in request.cookies:
            response.headers.append("set-cookie", clear_cookie_header(
                secure=self._kit.cookie_secure(request)))
        return response
