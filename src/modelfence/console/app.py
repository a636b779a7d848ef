"""The console's routes: login, logout and the overview, server-rendered with Jinja2.

The console does not import the gateway (it sits beside the admin API): the gateway hands
it `authenticate`, which checks a pasted admin credential exactly as AdminAuthenticator
checks an `Authorization` header, and `record`, which writes the audit record of every
console action naming the admin and never its credential.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import BadRequest, ModelfenceError, Unauthenticated
from .headers import SECURITY_HEADERS
from .session import COOKIE_NAME, ConsoleSession, SessionSigner, clear_cookie_header, cookie_header


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What authenticating a pasted credential concluded."""

    admin: str
    scopes: frozenset[str]
    models: frozenset[str]
    tenants: frozenset[str]


Authenticate = Callable[[str, Request], Awaitable[LoginResult]]
Record = Callable[[str, str, int, Request], Awaitable[None]]  # action, admin, status


def _templates() -> Environment:
    folder = Path(__file__).with_name("templates")
    return Environment(loader=FileSystemLoader(folder), autoescape=select_autoescape(["html"]))


class Console:
    """Builds the `/console` routes around a signer, an authenticator and an audit hook."""

    def __init__(self, signer: SessionSigner, authenticate: Authenticate, record: Record, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._signer = signer
        self._authenticate = authenticate
        self._record = record
        self._clock = clock
        self._env = _templates()

    def routes(self) -> list[Route]:
        return [Route("/console/login", self.login_form, methods=["GET"]),
                Route("/console/login", self.login, methods=["POST"]),
                Route("/console/logout", self.logout, methods=["POST"]),
                Route("/console/", self.overview, methods=["GET"]),
                Route("/console", self.overview, methods=["GET"])]

    def _render(self, name: str, status: int = 200, **values: object) -> HTMLResponse:
        html = self._env.get_template(name).render(**values)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def _signed_in(self, request: Request) -> ConsoleSession | None:
        """The request's valid session; None sends the browser to the login page."""
        try:
            return self._signer.verify(request.cookies.get(COOKIE_NAME), now=int(self._clock()))
        except Unauthenticated:
            return None

    async def login_form(self, request: Request) -> Response:
        return self._render("login.html", title="Log in", session=None)

    async def login(self, request: Request) -> Response:
        if not _same_origin(request):
            return self._render("login.html", 403, title="Log in", session=None,
                                message="cross-site login refused")
        form = await _form(request)
        credential = form.get("credential")
        try:
            if not isinstance(credential, str) or not credential:
                raise Unauthenticated("paste an admin credential")
            who = await self._authenticate(credential.strip(), request)
        except ModelfenceError as exc:
            status = getattr(exc, "status", 401)
            await self._record("console:login", str(getattr(request.state, "admin_name", "?")),
                               status, request)
            return self._render("login.html", status, title="Log in", session=None,
                                message=("login refused: the audit log cannot record it now"
                                         if status == 503 else
                                         "login refused: the credential was not accepted"))
        cookie, _ = self._signer.issue(admin=who.admin, scopes=who.scopes, models=who.models,
                                       tenants=who.tenants, now=int(self._clock()))
        await self._record("console:login", who.admin, 303, request)
        response = RedirectResponse("/console/", status_code=303, headers=SECURITY_HEADERS)
        response.headers.append("set-cookie", cookie_header(
            cookie, max_age=self._signer.lifetime_s, secure=request.url.scheme == "https"))
        return response

    async def logout(self, request: Request) -> Response:
        session = self._signed_in(request)
        if session is None:
            return _to_login()
        try:
            token: str | None = (await _form(request)).get("csrf")
        except BadRequest:
            token = None
        if not self._signer.check_csrf(session, token):
            return self._render("overview.html", 403, title="Overview", session=session,
                                csrf=self._signer.csrf_token(session), scopes="",
                                message="the form's CSRF token is not valid; reload the page")
        await self._record("console:logout", session.admin, 303, request)
        response = _to_login()
        response.headers.append("set-cookie", clear_cookie_header(
            secure=request.url.scheme == "https"))
        return response

    async def overview(self, request: Request) -> Response:
        session = self._signed_in(request)
        if session is None:
            return _to_login()
        return self._render("overview.html", title="Overview", session=session,
                            csrf=self._signer.csrf_token(session),
                            scopes=", ".join(sorted(session.scopes)))


def _to_login() -> RedirectResponse:
    return RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)


def _same_origin(request: Request) -> bool:
    """A POST from another site is refused. Under `Referrer-Policy: no-referrer` a browser
    sends `Origin: null` with a form, so Sec-Fetch-Site (sent by every current browser)
    decides first; a client that sends neither header is no browser, so no CSRF victim."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


_MAX_FORM = 16384  # bytes: a credential, a token and a few fields


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields, first value each (no multipart: the console sends none)."""
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise BadRequest("form too large")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("form is not valid") from None
    return {name: values[0] for name, values in fields.items()}
