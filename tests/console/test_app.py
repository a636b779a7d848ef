"""The console's login, overview, CSRF on logout, and headers, against a fake authenticator."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from modelfence.console.app import Console, LoginResult
from modelfence.console.kit import MAX_FORM, ConsoleKit
from modelfence.console.session import COOKIE_NAME, SessionSigner
from modelfence.errors import Unauthenticated

TOKEN = "a-valid-admin-token-of-24-chars-or-more"
SECRET = b"k" * 32


def _client() -> tuple[TestClient, list[tuple[str, str, int]]]:
    records: list[tuple[str, str, int]] = []

    async def authenticate(credential: str, request: Request) -> LoginResult:
        if credential != TOKEN:
            raise Unauthenticated(reason="bad_admin_token")
        return LoginResult("admin:ops", frozenset({"risk:read"}), frozenset({"*"}),
                           frozenset({"*"}))

    async def record(action: str, admin: str, status: int, request: Request,
                     target: object, details: object) -> None:
        records.append((action, admin, status))

    console = Console(ConsoleKit(SessionSigner(SECRET, lifetime_s=600), record), authenticate)
    client = TestClient(Starlette(routes=console.routes()), base_url="http://testserver")
    return client, records


def test_login_overview_logout() -> None:
    client, records = _client()
    assert client.get("/console/", follow_redirects=False).status_code == 303
    form = client.get("/console/login")
    assert form.headers["content-security-policy"].startswith("default-src 'none'")
    assert form.headers["cache-control"] == "no-store"
    answer = client.post("/console/login", data={"credential": TOKEN}, follow_redirects=False)
    assert answer.status_code == 303
    set_cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert TOKEN not in set_cookie
    page = client.get("/console/")
    assert page.status_code == 200 and "admin:ops" in page.text and TOKEN not in page.text
    # logout without the CSRF token is refused, with it the session ends
    assert client.post("/console/logout", data={}, follow_redirects=False).status_code == 403
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    out = client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert [r[0] for r in records] == ["console:login", "console:logout"]
    assert all(TOKEN not in r[1] for r in records)


def test_bad_credential_and_cross_site_login_are_refused() -> None:
    client, records = _client()
    bad = client.post("/console/login", data={"credential": "wrong"}, follow_redirects=False)
    assert bad.status_code == 401 and COOKIE_NAME not in bad.headers.get("set-cookie", "")
    assert "wrong" not in bad.text
    cross = client.post("/console/login", data={"credential": TOKEN},
                        headers={"origin": "https://evil.example"}, follow_redirects=False)
    assert cross.status_code == 403
    assert records[0][0] == "console:login" and records[0][2] == 401


def test_same_site_browser_with_null_origin_may_log_in() -> None:
    client, _ = _client()
    ok = client.post("/console/login", data={"credential": TOKEN}, follow_redirects=False,
                     headers={"origin": "null", "sec-fetch-site": "same-origin"})
    assert ok.status_code == 303
    cross = client.post("/console/login", data={"credential": TOKEN}, follow_redirects=False,
                        headers={"origin": "null", "sec-fetch-site": "cross-site"})
    assert cross.status_code == 403


def test_login_is_refused_while_the_audit_log_cannot_record_it() -> None:
    from modelfence.errors import Unavailable

    async def authenticate(credential: str, request: Request) -> LoginResult:
        raise Unavailable("the audit log cannot record console logins now",
                          reason="audit_unavailable")

    async def record(action: str, admin: str, status: int, request: Request,
                     target: object, details: object) -> None:
        return None

    console = Console(ConsoleKit(SessionSigner(SECRET, lifetime_s=600), record), authenticate)
    client = TestClient(Starlette(routes=console.routes()))
    answer = client.post("/console/login", data={"credential": TOKEN}, follow_redirects=False)
    assert answer.status_code == 503 and "audit log" in answer.text
    assert "set-cookie" not in answer.headers


def test_an_oversized_form_is_refused_with_413_and_an_empty_one_is_no_credential() -> None:
    client, records = _client()
    big = client.post("/console/login", content=b"credential=" + b"a" * MAX_FORM,
                      headers={"content-type": "application/x-www-form-urlencoded"},
                      follow_redirects=False)
    assert big.status_code == 413 and f"over the {MAX_FORM} byte limit" in big.text
    assert "a" * 64 not in big.text
    empty = client.post("/console/login", content=b"", follow_redirects=False)
    assert empty.status_code == 401
    assert [r[2] for r in records] == [413, 401]


def test_a_page_needs_its_scope() -> None:
    records: list[tuple[str, str, int]] = []

    async def authenticate(credential: str, request: Request) -> LoginResult:
        return LoginResult("admin:keys-only", frozenset({"keys:read"}), frozenset({"*"}),
                           frozenset({"*"}))

    async def record(action: str, admin: str, status: int, request: Request,
                     target: object, details: object) -> None:
        records.append((action, admin, status))

    console = Console(ConsoleKit(SessionSigner(SECRET, lifetime_s=600), record), authenticate)
    client = TestClient(Starlette(routes=console.routes()))
    client.post("/console/login", data={"credential": TOKEN}, follow_redirects=False)
    page = client.get("/console/")
    assert page.status_code == 403 and "risk:read" in page.text


def test_static_files_are_the_vendored_htmx_and_nothing_else() -> None:
    import hashlib

    client, _ = _client()
    script = client.get("/console/static/htmx-2.0.11.min.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert hashlib.sha256(script.content).hexdigest() == (
        "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717")
    assert client.get("/console/static/console.css").status_code == 200
    for name in ("../app.py", "..%2Fapp.py", "app.py", "README.md"):
        assert client.get(f"/console/static/{name}").status_code == 404


def test_the_cookie_is_secure_over_tls_or_when_configured_behind_a_tls_proxy() -> None:
    async def authenticate(credential: str, request: Request) -> LoginResult:
        return LoginResult("admin:ops", frozenset({"risk:read"}), frozenset({"*"}),
                           frozenset({"*"}))

    async def record(action: str, admin: str, status: int, request: Request,
                     target: object, details: object) -> None:
        return None

    def cookie(base_url: str, secure_cookie: bool) -> str:
        kit = ConsoleKit(SessionSigner(SECRET, lifetime_s=600), record,
                         secure_cookie=secure_cookie)
        client = TestClient(Starlette(routes=Console(kit, authenticate).routes()),
                            base_url=base_url)
        answer = client.post("/console/login", data={"credential": TOKEN},
                             follow_redirects=False)
        assert answer.status_code == 303
        return answer.headers["set-cookie"]

    assert "Secure" not in cookie("http://testserver", secure_cookie=False)
    assert "Secure" in cookie("https://testserver", secure_cookie=False)
    assert "Secure" in cookie("http://testserver", secure_cookie=True)
