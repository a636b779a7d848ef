"""Ending console sessions before they expire, through the gateway's own console wiring on a
real SQLite audit store: a logged-out cookie replayed goes to the login page (on any worker
reading the store), a cookie from before its credential left the configuration is refused,
and a session that cannot be checked gets 503 and nothing of the page."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from modelfence.audit.sinks import audit_store_of
from modelfence.audit.store import AuditStore, Query
from modelfence.audit.store_sqlite import SqliteAuditStore
from modelfence.config import settings_from_mapping
from modelfence.console.liveness import LOGOUT, TARGET, EndedSessions
from modelfence.console.session import COOKIE_NAME, ConsoleSession, SessionSigner
from modelfence.errors import StoreError
from modelfence.gateway.app import build_app

ADMIN = "admin-" + "t" * 30
DESK = "desk-" + "d" * 30


@contextmanager
def console(folder: Path, monkeypatch: pytest.MonkeyPatch, *, admin: str = ADMIN,
            desk: bool = True) -> Iterator[TestClient]:
    """A gateway's admin app (console enabled, SQLite audit in `folder`), its lifespan run:
    one `build_app` is one worker's start, so a second call is a restart with a new config."""
    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", admin)
    monkeypatch.setenv("DESK_TOKEN", DESK)
    tokens = [{"name": "desk", "token_env": "DESK_TOKEN", "scopes": ["risk:read"],
               "models": ["*"]}] if desk else []
    settings = settings_from_mapping({
        "server": {"admin_listen": None}, "console": {"enabled": True},
        "admin": {"tokens": tokens}, "audit": {"sink": "sqlite:///audit.db"}},
        base_dir=folder)
    with TestClient(Worker(build_app(settings)), base_url="http://testserver") as client:
        yield client


class Worker:
    """The gateway's lifespan (stores opened) with its admin app answering requests."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        target = self.app if scope["type"] == "lifespan" else self.app.state.admin_app
        await target(scope, receive, send)

    @staticmethod
    def audit_store(client: TestClient) -> AuditStore:
        assert isinstance(client.app, Worker)
        store = audit_store_of(client.app.app.state.gateway.audit_sink)
        assert store is not None
        return store


def login(client: TestClient, credential: str) -> str:
    answer = client.post("/console/login", data={"credential": credential},
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client.cookies[COOKIE_NAME]


def csrf_of(client: TestClient) -> str:
    page = client.get("/console/")
    assert page.status_code == 200
    return page.text.split('name="csrf" value="')[1].split('"')[0]


def replay(client: TestClient, cookie: str, path: str = "/console/") -> Any:
    client.cookies.clear()
    client.cookies.set(COOKIE_NAME, cookie)
    return client.get(path, follow_redirects=False)


def test_a_logged_out_cookie_replayed_goes_to_the_login_page(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with console(tmp_path, monkeypatch) as client:
        cookie = login(client, ADMIN)
        other = login(client, ADMIN)  # a second session of the same admin stays live
        client.cookies.set(COOKIE_NAME, cookie)
        out = client.post("/console/logout", data={"csrf": csrf_of(client)},
                          follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert "Max-Age=0" in out.headers["set-cookie"]
        for path in ("/console/", "/console/models", "/console/audit"):
            again = replay(client, cookie, path)
            assert again.status_code == 303 and again.headers["location"] == "/console/login"
            assert "Max-Age=0" in again.headers["set-cookie"]
        client.cookies.set(COOKIE_NAME, cookie)
        refused = client.post("/console/logout", data={"csrf": "x"}, follow_redirects=False)
        assert refused.headers["location"] == "/console/login"
        assert replay(client, other).status_code == 200
        rows = asyncio.run(_logouts(Worker.audit_store(client)))
    # the record names the session by a hash of its id, never the cookie or the id itself
    payload = rows[-1].payload.decode()
    assert f'"key_id":"{TARGET}{session_of(cookie).ended_id}"' in payload
    assert cookie not in payload and session_of(cookie).sid not in payload


async def _logouts(store: AuditStore) -> list[Any]:
    return await store.select(Query(action=LOGOUT))


def test_another_worker_reading_the_store_sees_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker started after the logout (a fresh EndedSessions on the same file) refuses
    the cookie, and one started before it reads the end on its next request."""
    with console(tmp_path, monkeypatch) as first, console(tmp_path, monkeypatch) as second:
        cookie = login(first, ADMIN)
        assert replay(second, cookie).status_code == 200  # `second` has read the store
        first.cookies.set(COOKIE_NAME, cookie)
        first.post("/console/logout", data={"csrf": csrf_of(first)})
        assert replay(second, cookie).headers["location"] == "/console/login"
    session = session_of(cookie)

    async def fresh() -> bool:
        store = SqliteAuditStore(tmp_path / "audit.db", create=False)
        await store.open()
        try:
            return await EndedSessions(store, keep_s=900).ended(session)
        finally:
            await store.close()

    assert asyncio.run(fresh())


def session_of(cookie: str) -> ConsoleSession:
    """What a cookie's (readable) payload says, its signature not checked."""
    body = cookie.split(".")[0]
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return ConsoleSession(sid=data["sid"], admin=data["admin"], scopes=frozenset(),
                          models=frozenset(), tenants=frozenset(), expires=data["exp"],
                          credential=data["cred"])


def test_a_cookie_from_before_its_credential_was_removed_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with console(tmp_path, monkeypatch) as client:
        desk, full = login(client, DESK), login(client, ADMIN)
    with console(tmp_path, monkeypatch) as same:  # a restart with the same credentials
        assert replay(same, desk).status_code == 200
        assert replay(same, full).status_code == 200
    with console(tmp_path, monkeypatch, desk=False) as removed:  # admin.tokens desk removed
        assert replay(removed, desk).headers["location"] == "/console/login"
        assert replay(removed, full).status_code == 200
    with console(tmp_path, monkeypatch, admin="rotated-" + "r" * 30) as rotated:
        assert replay(rotated, full).headers["location"] == "/console/login"
        assert replay(rotated, desk).status_code == 200
        assert "Logged in" in rotated.get("/console/").text


def test_a_session_that_cannot_be_checked_gets_503_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with console(tmp_path, monkeypatch) as client:
        cookie = login(client, ADMIN)
        assert replay(client, cookie).status_code == 200
        store = Worker.audit_store(client)
        assert isinstance(store, SqliteAuditStore)

        async def down(query: Query) -> list[Any]:
            raise StoreError("audit store: OperationalError", store="audit")

        monkeypatch.setattr(store, "select", down)
        for path in ("/console/", "/console/models", "/console/audit?principal=x"):
            answer = replay(client, cookie, path)
            assert answer.status_code == 503, (path, answer.status_code)
            assert "cannot check sessions" in answer.text
            assert "Logged in" not in answer.text and "csrf" not in answer.text
        assert client.get("/console/login").status_code == 200  # the login form still shows


def test_an_unreachable_postgres_store_is_an_error_not_a_pass() -> None:
    from modelfence.audit.store_postgres import PostgresAuditStore

    store = PostgresAuditStore("postgresql://nobody@127.0.0.1:1/none")
    signer = SessionSigner(b"s" * 32, lifetime_s=900)
    _, session = signer.issue(admin="admin", scopes=frozenset({"risk:read"}),
                              models=frozenset({"*"}), tenants=frozenset({"*"}), now=1000)
    with pytest.raises(StoreError):
        asyncio.run(EndedSessions(store, keep_s=900).ended(session))


def test_an_oidc_session_ends_with_its_token_and_names_no_secret() -> None:
    signer = SessionSigner(b"s" * 32, lifetime_s=900)
    cookie, session = signer.issue(admin="admin:oidc:alice", scopes=frozenset({"risk:read"}),
                                   models=frozenset({"*"}), tenants=frozenset({"*"}),
                                   now=1000, credential=signer.fingerprint("oidc:x"),
                                   not_after=1060)
    assert session.expires == 1060 and signer.verify(cookie, now=1059) == session
    with pytest.raises(Exception, match="expired"):
        signer.verify(cookie, now=1060)
    assert session.ended_id != hashlib.sha256(session.sid.encode()).hexdigest()[:32]
    assert "oidc:x" not in cookie


def test_a_logout_that_cannot_be_read_back_says_so_and_clears_the_cookie(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit store answers but the logout's record never lands there (lost by the
    writer): the admin is told, not sent to the login page as if it were done."""
    with console(tmp_path, monkeypatch) as client:
        cookie = login(client, ADMIN)
        csrf = csrf_of(client)
        assert isinstance(client.app, Worker)
        sink = client.app.app.state.gateway.audit_sink

        async def lost(record: object) -> None:
            return None

        monkeypatch.setattr(sink, "write", lost)
        monkeypatch.setattr("modelfence.console.liveness._SETTLE_S", 0.3)
        out = client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
        assert out.status_code == 503 and "could not record the logout" in out.text
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert replay(client, cookie).status_code == 200  # not ended: the page said so


def test_ends_are_read_incrementally_and_forgotten_once_their_sessions_expired(
        tmp_path: Path) -> None:
    from modelfence.audit.chain import Entry, link
    from modelfence.audit.store import Batch

    signer = SessionSigner(b"s" * 32, lifetime_s=900)
    now = [1_000_000.0]
    old, early, late, live = (signer.issue(admin="a", scopes=frozenset(), models=frozenset(),
                                           tenants=frozenset(), now=1)[1] for _ in range(4))

    def logout(session: ConsoleSession, at: float) -> Entry:
        payload = json.dumps({"key_id": TARGET + session.ended_id}).encode()
        return Entry(int(at * 1e6), None, "a", None, None, LOGOUT, 303, payload)

    async def run() -> list[bool]:
        store = SqliteAuditStore(tmp_path / "audit.db")
        await store.open()
        try:
            entries = [logout(old, now[0] - 3 * 3600), logout(early, now[0] - 60)]
            await store.commit(lambda h, c: Batch(link(h, entries)))
            ended = EndedSessions(store, keep_s=900, clock=lambda: now[0])
            seen = [await ended.ended(old), await ended.ended(early), await ended.ended(late)]
            await store.commit(lambda h, c: Batch(link(h, [logout(late, now[0])])))
            seen += [await ended.ended(late), await ended.ended(live)]
            now[0] += 900 + 600 + 1  # past the lifetime and the clocks' skew
            await ended.ended(live)  # a read forgets the ends whose sessions expired
            seen.append(await ended.ended(early))
            return seen
        finally:
            await store.close()

    # the logout 3 h ago is outside a 900 s lifetime: its session expired long ago
    assert asyncio.run(run()) == [False, True, False, True, False, False]
