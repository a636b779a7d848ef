"""Console session cookies, CSRF tokens and security headers."""

from __future__ import annotations

import pytest

from modelfence.console.headers import SECURITY_HEADERS
from modelfence.console.session import (
    COOKIE_NAME,
    SessionSigner,
    clear_cookie_header,
    cookie_header,
)
from modelfence.errors import Unauthenticated

SECRET = b"s" * 32
ADMIN_TOKEN = "admin-token-that-must-not-leak"


def _issue(signer: SessionSigner, now: int = 1000) -> tuple[str, object]:
    return signer.issue(admin="ops", scopes=frozenset({"risk:read"}), models=frozenset({"m"}),
                        tenants=frozenset({"*"}), now=now)


def test_round_trip_carries_identity_not_credential() -> None:
    signer = SessionSigner(SECRET, lifetime_s=600)
    cookie, issued = _issue(signer)
    session = signer.verify(cookie, now=1001)
    assert session == issued
    assert session.admin == "ops" and session.scopes == frozenset({"risk:read"})
    assert ADMIN_TOKEN not in cookie and SECRET.decode() not in cookie


@pytest.mark.parametrize("mangle", [
    lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"),  # signature flipped
    lambda c: "e30" + c[c.index("."):],  # payload swapped for {}
    lambda c: c.replace(".", ""),
    lambda c: "",
    lambda c: "x" * 5000,
])
def test_forged_cookie_is_refused(mangle: object) -> None:
    signer = SessionSigner(SECRET, lifetime_s=600)
    cookie, _ = _issue(signer)
    with pytest.raises(Unauthenticated):
        signer.verify(mangle(cookie), now=1001)  # type: ignore[operator]


def test_other_secret_and_expiry_are_refused() -> None:
    cookie, _ = _issue(SessionSigner(SECRET, lifetime_s=600))
    with pytest.raises(Unauthenticated):
        SessionSigner(b"t" * 32, lifetime_s=600).verify(cookie, now=1001)
    with pytest.raises(Unauthenticated, match="expired"):
        SessionSigner(SECRET, lifetime_s=600).verify(cookie, now=1600)


def test_csrf_is_tied_to_the_session() -> None:
    signer = SessionSigner(SECRET, lifetime_s=600)
    _, one = _issue(signer)
    _, two = _issue(signer)
    token = signer.csrf_token(one)  # type: ignore[arg-type]
    assert signer.check_csrf(one, token)  # type: ignore[arg-type]
    assert not signer.check_csrf(two, token)  # type: ignore[arg-type]
    assert not signer.check_csrf(one, None)  # type: ignore[arg-type]
    assert not signer.check_csrf(one, token[:-1])  # type: ignore[arg-type]


def test_cookie_attributes() -> None:
    header = cookie_header("v", max_age=900, secure=True)
    assert header.startswith(f"{COOKIE_NAME}=v;")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=900", "Secure"):
        assert attribute in header
    assert "Secure" not in cookie_header("v", max_age=900, secure=False)
    assert "Max-Age=0" in clear_cookie_header(secure=False)


def test_security_headers_are_strict() -> None:
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                      "img-src 'self' data:", "form-action 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert SECURITY_HEADERS["Referrer-Policy"] == "no-referrer"
    assert SECURITY_HEADERS["Cache-Control"] == "no-store"
