"""The console's OIDC login against a real OpenID provider, over loopback HTTP.

`oidc-provider-mock` (authlib under Flask, in a thread) is the identity provider: discovery,
a JWKS, the authorization endpoint and the token endpoint of the authorization-code flow,
RS256 ID tokens signed with its own key. The test plays the admin's side of that flow (the
console takes the ID token an admin pastes: it runs no redirect flow of its own), then logs
in to a real `modelfence serve` whose `identity.jwt` trusts the provider and whose
`admin.oidc` names the admin group. A valid token makes a session that ends with the token;
an expired token, one for another audience, one from another issuer, an unsigned one, a
tampered one and one of a user outside the admin group are refused with a message that
names no secret, each refusal audited with its reason and never with the token.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2 as httpx
import pytest

from ..support import Gateway
from .test_admin_listener import skops_model

#: The provider's authlib warns of its own deprecated calls (in the provider's thread).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib.*")

CLIENT = "modelfence-console"
GROUP = "mf-admins"
LIFETIME_S = 8  # the provider's ID tokens' lifetime: short, to see one expire
REFUSED = "login refused: the credential was not accepted"


@pytest.fixture(scope="module")
def idp() -> Iterator[str]:
    """The provider's base URL (its issuer): carol is an admin, dave is not."""
    with warnings.catch_warnings():  # its import: authlib's own deprecation warnings
        warnings.simplefilter("ignore")
        from oidc_provider_mock import run_server_in_thread
    with run_server_in_thread(access_token_max_age=timedelta(seconds=LIFETIME_S)) as server:
        base = f"http://127.0.0.1:{server.server_port}"
        for sub, groups in (("carol", [GROUP, "staff"]), ("dave", ["staff"])):
            httpx.put(f"{base}/users/{sub}", json={"groups": groups, "tid": "ops"},
                      timeout=10).raise_for_status()
        yield base


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path],
            idp: str) -> Iterator[Gateway]:
    discovery = httpx.get(f"{idp}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == idp
    gw = Gateway(tmp_path_factory.mktemp("console-oidc"), [skops_model(digits_files)], extra={
        "identity": {"jwt": {"issuer": discovery["issuer"], "audiences": [CLIENT],
                             "jwks_url": discovery["jwks_uri"], "tenant_claim": "tid",
                             "groups_claim": "groups", "leeway_s": 0}},
        "admin": {"token_file": "admin-token",
                  "oidc": {"group": GROUP, "scopes": ["risk:read", "alerts:read"]}},
        "console": {"enabled": True, "session_lifetime_s": 300}})
    gw.start()
    yield gw
    gw.stop()


def id_token(base: str, sub: str, client: str = CLIENT) -> str:
    """The authorization-code flow as the admin's browser and a client run it: the
    authorization request, the provider's form (the user picks `sub`), the redirect with a
    code, and the code exchanged at the token endpoint for the ID token. `base` is the
    address the provider is asked at, which it names as the issuer."""
    redirect = "http://127.0.0.1:9/callback"  # read from the Location header, never fetched
    state, nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
    params = {"client_id": client, "redirect_uri": redirect, "response_type": "code",
              "scope": "openid", "state": state, "nonce": nonce}
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/oauth2/authorize", params=params).status_code == 200
        back = c.post("/oauth2/authorize", params=params, data={"sub": sub})
        assert back.status_code == 302, back.text
        query = parse_qs(urlparse(back.headers["location"]).query)
        assert query["state"] == [state]
        answer = c.post("/oauth2/token", auth=(client, "client-secret"), data={
            "grant_type": "authorization_code", "code": query["code"][0],
            "redirect_uri": redirect})
        assert answer.status_code == 200, answer.text
        token = str(answer.json()["id_token"])
    claims = _claims(token)
    assert claims["nonce"] == nonce and claims["sub"] == sub
    return token


def _claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    out: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return out


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def _login(gw: Gateway, credential: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=gw.admin_url, timeout=30)
    return client, client.post("/console/login", data={"credential": credential})


def _logins(gw: Gateway) -> list[dict[str, Any]]:
    return [r for r in gw.audit_records() if r["action"] == "console:login"]


def _secrets(gw: Gateway, *tokens: str) -> list[str]:
    """What no page or record may carry: the tokens (and their signatures alone), the admin
    token, the gateway's secret."""
    out = [gw.admin_token, (gw.folder / "secret").read_text()]
    for token in tokens:
        out += [token, token.split(".")[2]] if token.count(".") == 2 and token.split(".")[2] \
            else [token]
    return out


def test_a_valid_id_token_makes_a_session_that_ends_with_the_token(gateway: Gateway,
                                                                     idp: str) -> None:
    gw = gateway
    token = id_token(idp, "carol")
    client, login = _login(gw, token)
    with closing(client):
        assert login.status_code == 303 and login.headers["location"] == "/console/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        page = client.get("/console/")
        assert page.status_code == 200 and "admin:oidc:carol" in page.text
        # its grant is admin.oidc's: risk:read and alerts:read, not audit:read
        assert client.get("/console/alerts").status_code == 200
        assert client.get("/console/audit").status_code == 403
        for text in (login.text, page.text, cookie):
            assert all(s not in text for s in _secrets(gw, token))
        # the session ends when the ID token does (before session_lifetime_s)
        time.sleep(max(0.0, _claims(token)["exp"] - time.time()) + 1.5)
        after = client.get("/console/", follow_redirects=False)
        assert after.status_code in (302, 303) and "/console/login" in after.headers["location"]
        # and the same token, expired now, is refused, saying so
        again = client.post("/console/login", data={"credential": token})
        assert again.status_code == 401
        assert "the token has expired" in again.text
        assert all(s not in again.text for s in _secrets(gw, token))
    records = _logins(gw)
    assert [(r["principal"], r["status"]) for r in records[-2:]] == [
        ("admin:oidc:carol", 303), ("admin:unknown", 401)]
    assert records[-1]["details"] == {"refused": "expired_token"}
    assert token not in gw.audit_text() and token not in gw.log.read_text()


def _forged(idp: str) -> dict[str, str]:
    """The tokens an admin must never get in with, each made fresh (unexpired)."""
    good = id_token(idp, "carol")
    head, body, sig = good.split(".")
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{body}."
    claims = {**_claims(good), "sub": "mallory"}
    return {
        "wrong_audience": id_token(idp, "carol", client="another-app"),
        # the provider asked at another of its names: the same key, another issuer
        "wrong_issuer": id_token(idp.replace("127.0.0.1", "localhost"), "carol"),
        "alg_not_allowed": unsigned,
        "bad_signature": f"{head}.{_b64(claims)}.{sig}",
        "not_admin": id_token(idp, "dave"),
    }


def test_bad_tokens_are_refused_clearly_and_name_no_secret(gateway: Gateway,
                                                           idp: str) -> None:
    gw = gateway
    before = len(_logins(gw))
    tokens = _forged(idp)
    assert _claims(tokens["wrong_issuer"])["iss"] != idp
    assert _claims(tokens["wrong_audience"])["aud"] in ("another-app", ["another-app"])
    for reason, token in tokens.items():
        client, refused = _login(gw, token)
        with closing(client):
            assert refused.status_code == (403 if reason == "not_admin" else 401), reason
            assert "set-cookie" not in refused.headers, reason
            assert REFUSED in refused.text, reason
            assert all(s not in refused.text for s in _secrets(gw, *tokens.values())), reason
            assert client.get("/console/", follow_redirects=False).status_code in (302, 303)
    records = _logins(gw)[before:]
    assert [r["details"]["refused"] for r in records] == [
        "wrong_audience", "wrong_issuer", "alg_not_allowed", "bad_signature", "not_admin"]
    assert [r["principal"] for r in records][-1] == "admin:oidc:dave"
    text = gw.audit_text() + gw.log.read_text()
    assert all(t not in text for t in tokens.values())
