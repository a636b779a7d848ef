"""The console's own routes: login, logout and the overview, server-rendered with Jinja2.

The console does not import the gateway (it sits beside the admin API): the gateway hands
it `authenticate`, which checks a pasted admin credential exactly as AdminAuthenticator
checks an `Authorization` header, and the kit's audit hook, which writes the record of every
console action naming the admin and never its credential. Pages beyond these (rankings,
alerts, audit search, ...) are modules of their own built on the same `ConsoleKit`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import ModelfenceError, RequestError, Unauthenticated, Unavailable
from .headers import SECURITY_HEADERS
from .kit import ConsoleKit, Posted, read_form, same_origin, to_login
from .liveness import SessionGate
from .session import ConsoleSession, clear_cookie_header, cookie_header
from .static import StaticFiles


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What authenticating a pasted credential concluded."""

    admin: str
    scopes: frozenset[str]
    models: frozenset[str]
    tenants: frozenset[str]
    credential: str = ""  # fingerprint of the configured credential it matched
    not_after: int | None = None  # the credential's own expiry (an OIDC token's exp)


_EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Authenticate = Callable[[str, Request], Awaitable[LoginResult]]


@dataclass(frozen=True, slots=True)
class NavLink:
    """One entry of the console's navigation, shown to admins holding its scope."""

    href: str
    label: str
    scope: str


class Console:
    """Builds `/console`: login, logout, the overview, and the routes of its page modules.

    With a `gate` (the gateway always gives one), every route but the login form and the
    static files first checks that the session is still live (liveness.py), and logout
    ends the session on every worker and replica, not only in this browser."""

    def __init__(self, kit: ConsoleKit, authenticate: Authenticate,
                 pages: list[BaseRoute] | None = None,
                 nav: list[NavLink] | None = None, gate: SessionGate | None = None) -> None:
        self._kit = kit
        self._authenticate = authenticate
        self._pages = pages or []
        self._nav = nav or []
        self._gate = gate
        kit.env.globals["nav_links"] = self._nav

    def routes(self) -> list[BaseRoute]:
        signed: list[BaseRoute] = [
            Route("/console/logout", self.logout, methods=["POST"]),
            self._kit.page_route("/console/", "risk:read", self.overview),
            self._kit.page_route("/console", "risk:read", self.overview), *self._pages,
            Route("/console/{rest:path}", self.missing, methods=_EVERY_METHOD)]
        if self._gate is not None:
            signed = self._gate.wrap(signed)
        return [Route("/console/login", self.login_form, methods=["GET"]),
                Route("/console/login", self.login, methods=["POST"]),
                *StaticFiles().routes(), *signed]

    async def missing(self, request: Request) -> Response:
        """Any other /console path or method: a 404 page with the console's headers (the
        listener's own 404 and 405 answers carry none)."""
        return self._kit.render("denied.html", 404, session=self._kit.signed_in(request),
                                title="Not found", message="no such console page")

    async def login_form(self, request: Request) -> Response:
        return self._kit.render("login.html", title="Log in", session=None)

    async def login(self, request: Request) -> Response:
        kit = self._kit
        if not same_origin(request):
            return kit.render("login.html", 403, title="Log in", session=None,
                              message="cross-site login refused")
        try:
            credential = (await read_form(request)).get("credential")
            if not credential:
                raise Unauthenticated("paste an admin credential")
            who = await self._authenticate(credential.strip(), request)
        except ModelfenceError as exc:
            if not isinstance(exc, RequestError):  # a store behind the admins cannot answer
                exc = Unavailable("the admin credentials cannot be checked now")
            status = exc.status
            await kit.record("console:login", str(getattr(request.state, "admin_name", "?")),
                             status, request, details={"refused": exc.reason})
            return kit.render("login.html", status, title="Log in", session=None,
                              message=_refusal(exc))
        cookie, _ = kit.signer.issue(admin=who.admin, scopes=who.scopes, models=who.models,
                                     tenants=who.tenants, now=int(kit.clock()),
                                     credential=who.credential, not_after=who.not_after)
        await kit.record("console:login", who.admin, 303, request)
        response = RedirectResponse("/console/", status_code=303, headers=SECURITY_HEADERS)
        response.headers.append("set-cookie", cookie_header(
            cookie, max_age=kit.signer.lifetime_s, secure=kit.cookie_secure(request)))
        return response

    async def logout(self, request: Request) -> Response:
        posted = await self._kit.post(request, "risk:read")
        if not isinstance(posted, Posted):
            return posted
        session, gate = posted.session, self._gate
        await self._kit.record("console:logout", session.admin, 303, request,
                               target=gate.ended.target(session) if gate else None)
        if gate is not None and not await gate.ended.end(session):
            response: Response = self._kit.render(
                "denied.html", 503, session=None, title="Logout not recorded",
                message="this browser is logged out, but the audit log could not record the "
                        "logout now: a copy of this session's cookie stays valid until the "
                        "audit log takes the record or the session expires")
        else:
            response = to_login()
        response.headers.append("set-cookie", clear_cookie_header(
            secure=self._kit.cookie_secure(request)))
        return response

    async def overview(self, request: Request, session: ConsoleSession) -> Response:
        return self._kit.render("overview.html", title="Overview", session=session,
                                scopes=", ".join(sorted(session.scopes)))


def _refusal(exc: RequestError) -> str:
    """What the login page says, never which part of a credential was wrong: only that an
    OIDC token has expired (its `exp` is no secret: anyone holding the token reads it), so
    that an admin knows to sign in to the identity provider again."""
    if exc.reason == "expired_token":
        return ("login refused: the token has expired; sign in to your identity provider "
                "again and paste the new token")
    if exc.status == 503:
        return f"login refused: {exc.message}"
    if exc.status in (400, 413):
        return f"login refused: {exc.message}"
    return "login refused: the credential was not accepted"
