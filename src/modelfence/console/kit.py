"""What every console page shares: rendering, the signed-in check, scopes, forms and audit.

A page module (overview, investigate, records, ...) gets one `ConsoleKit` and never touches
the cookie, the CSRF token or the audit hook itself, so every page checks them the same way:
a GET needs a session holding the page's scope; a POST also needs the same origin, a form
under `MAX_FORM` bytes and the session's CSRF token, and every action leaves an audit record.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import BadRequest, RequestError, Unauthenticated
from ..kernel.body import read_bounded
from .headers import SECURITY_HEADERS
from .session import COOKIE_NAME, ConsoleSession, SessionSigner

#: action, admin, status, request, target, details: writes the action's audit record
Record = Callable[[str, str, int, Request, "str | None", "Mapping[str, Any] | None"],
                  Awaitable[None]]
#: a GET page's handler, called with the session `ConsoleKit.page` let through
Page = Callable[[Request, ConsoleSession], Awaitable[Response]]
MAX_FORM = 16384  # bytes: a credential, a token and a few fields


def _templates() -> Environment:
    folder = Path(__file__).with_name("templates")
    return Environment(loader=FileSystemLoader(folder), autoescape=select_autoescape(["html"]))


@dataclass(frozen=True, slots=True)
class Posted:
    """A checked POST: who sent it and its form's fields (first value each)."""

    session: ConsoleSession
    form: dict[str, str]


@dataclass(eq=False)
class ConsoleKit:
    """The signer, templates, audit hook and clock every page uses."""

    signer: SessionSigner
    record_hook: Record
    clock: Callable[[], float] = time.time
    page_size: int = 50
    secure_cookie: bool = False  # Secure even over plain HTTP (TLS ended by a proxy)
    env: Environment = field(default_factory=_templates)

    def render(self, name: str, status: int = 200, *, session: ConsoleSession | None,
               **values: object) -> HTMLResponse:
        """A page, with the CSRF token its forms need when someone is signed in."""
        csrf = self.signer.csrf_token(session) if session is not None else ""
        html = self.env.get_template(name).render(session=session, csrf=csrf, **values)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def cookie_secure(self, request: Request) -> bool:
        """Whether the session cookie is marked Secure: over TLS, or always when configured."""
        return self.secure_cookie or request.url.scheme == "https"

    def signed_in(self, request: Request) -> ConsoleSession | None:
        """The request's valid session; None sends the browser to the login page."""
        try:
            return self.signer.verify(request.cookies.get(COOKIE_NAME), now=int(self.clock()))
        except Unauthenticated:
            return None

    def page(self, request: Request, scope: str) -> ConsoleSession | Response:
        """The session of a GET that may see a page needing `scope`, or the answer instead."""
        session = self.signed_in(request)
        if session is None:
            return to_login()
        if not session.allows(scope):
            return self.render("denied.html", 403, session=session, title="Not allowed",
                               message=f"this page needs the admin scope {scope}")
        return session

    def page_route(self, path: str, scope: str, handler: Page) -> Route:
        """The GET route of a page needing `scope`: the check stands beside the path, and
        `handler` runs only with a session that passed it (`page`)."""

        async def endpoint(request: Request) -> Response:
            session = self.page(request, scope)
            if isinstance(session, Response):
                return session
            return await handler(request, session)

        return Route(path, endpoint, methods=["GET"])

    async def post(self, request: Request, scope: str) -> Posted | Response:
        """A same-origin POST with a valid session, scope and CSRF token, or the answer."""
        session = self.signed_in(request)
        if session is None:
            return to_login()
        if not same_origin(request):
            return self.render("denied.html", 403, session=session, title="Not allowed",
                               message="cross-site form refused")
        if not session.allows(scope):
            return self.render("denied.html", 403, session=session, title="Not allowed",
                               message=f"this action needs the admin scope {scope}")
        try:
            form = await read_form(request)
        except RequestError as exc:
            return self.render("denied.html", exc.status, session=session, title="Bad form",
                               message=exc.message)
        if not self.signer.check_csrf(session, form.get("csrf")):
            return self.render("denied.html", 403, session=session, title="Not allowed",
                               message="the form's CSRF token is not valid; reload the page")
        return Posted(session, form)

    async def record(self, action: str, admin: str, status: int, request: Request, *,
                     target: str | None = None,
                     details: Mapping[str, Any] | None = None) -> None:
        """The audit record of a console action (never a credential)."""
        await self.record_hook(action, admin, status, request, target, details)


def whole(text: str | None, high: int) -> int | None:
    """`text` as a whole number from 0 to `high`, or None: ASCII digits only, since
    `str.isdigit` takes "²" and "٣" and `int` refuses the one and reads the other."""
    if not text or len(text) > 19 or not text.isascii() or not text.isdigit():
        return None
    n = int(text)
    return n if n <= high else None


def to_login() -> RedirectResponse:
    return RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)


def same_origin(request: Request) -> bool:
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


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields, first value each (no multipart: the console sends none).
    The body is streamed and refused (413) as soon as it passes `MAX_FORM` bytes."""
    try:
        body = await read_bounded(request, MAX_FORM)
    except BadRequest:  # an empty body is an empty form
        return {}
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form is not valid urlencoded UTF-8") from None
    return {name: values[0] for name, values in fields.items()}
