"""JWT bearer identities: verification, claim mapping, JWKS caching and refresh, config."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from modelfence.config import JwtSettings, load_settings, settings_from_mapping
from modelfence.errors import ConfigurationError, Unauthenticated, Unavailable
from modelfence.identity import BearerAuthenticator, build_authenticator
from modelfence.identity.jwt import JwtAuthenticator

from ..jwks_server import AUDIENCE, ISSUER, Issuer, JwksServer, SigningKey, b64
from ..support import free_port

KINDS = ("rsa", "ec", "ed25519")


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    idp = Issuer()
    for kind in KINDS:
        idp.add(kind, f"{kind}-1")
    idp.add("rsa", "stranger", publish=False)  # signs tokens the JWKS does not vouch for
    return idp


@pytest.fixture
def server(issuer: Issuer) -> Iterator[JwksServer]:
    """A JWKS server with its own copy of the issuer, so rotations stay in one test."""
    own = Issuer(keys=dict(issuer.keys), published=list(issuer.published))
    with JwksServer(own) as srv:
        yield srv


def jwt_settings(**over: Any) -> JwtSettings:
    raw: dict[str, Any] = {"issuer": ISSUER, "audiences": [AUDIENCE, "other"],
                           "tenant_claim": "tid", "attributes": {"clearance": "clearance"},
                           **over}
    settings = settings_from_mapping({"identity": {"jwt": raw}}).identity.jwt
    assert settings is not None
    return settings


@pytest.fixture
async def auth(server: JwksServer) -> AsyncIterator[JwtAuthenticator]:
    authenticator = JwtAuthenticator(jwt_settings(jwks_url=server.url))
    await authenticator.start()
    yield authenticator
    await authenticator.close()


async def reason_of(auth: JwtAuthenticator, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(token)
    err = info.value
    assert err.message == "missing or invalid credentials"
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert token not in f"{err!s} {err!r} {err.args}"
    return err.reason


@pytest.mark.parametrize("kind", KINDS)
async def test_a_valid_token_maps_its_claims_to_the_principal(
        auth: JwtAuthenticator, issuer: Issuer, kind: str) -> None:
    exp = int(datetime.now(UTC).timestamp()) + 600
    token = issuer.token(f"{kind}-1", sub="bob", tid="globex", groups=["a", "b"],
                         models="digits digits-onnx", clearance=3, exp=exp)
    p = await auth.authenticate(token)
    assert (p.id, p.tenant, p.groups, p.models) == ("bob", "globex", ("a", "b"),
                                                    ("digits", "digits-onnx"))
    assert p.key_id == f"jwt:{kind}-1"
    assert p.expires_at == datetime.fromtimestamp(exp, UTC)
    assert p.attributes == {"clearance": 3}
    assert p.may_use("digits") and not p.may_use("other-model")


async def test_second_audience_and_leeway(auth: JwtAuthenticator, issuer: Issuer) -> None:
    now = int(datetime.now(UTC).timestamp())
    p = await auth.authenticate(issuer.token("ec-1", aud=["x", "other"], exp=now - 10))
    assert p.id == "alice"  # expired 10 s ago is inside the 30 s leeway


@pytest.mark.parametrize(("case", "reason"), [
    ("wrong signature", "bad_signature"),
    ("expired", "expired_token"),
    ("not yet valid", "not_yet_valid"),
    ("issued in the future", "not_yet_valid"),
    ("wrong audience", "wrong_audience"),
    ("no audience", "wrong_audience"),
    ("wrong issuer", "wrong_issuer"),
    ("unknown kid", "unknown_kid"),
    ("alg none", "alg_not_allowed"),
    ("HS256 keyed by the public PEM", "alg_not_allowed"),
    ("HS256 keyed by the public JWK", "alg_not_allowed"),
    ("RSA kid with an ES256 header", "alg_not_allowed"),
    ("garbage", "malformed_token"),
    ("header not an object", "malformed_token"),
    ("kid not a string", "malformed_token"),
    ("signature cut off", "bad_signature"),
    ("no exp", "missing_claim"),
    ("no sub", "missing_claim"),
    ("no tenant", "missing_claim"),
    ("groups not a list", "invalid_claim"),
    ("exp past year 9999", "invalid_claim"),
])
async def test_every_failure_is_the_same_401_with_a_reason(
        auth: JwtAuthenticator, issuer: Issuer, case: str, reason: str) -> None:
    now = int(datetime.now(UTC).timestamp())
    rsa = issuer.keys["rsa-1"]
    tokens = {
        "wrong signature": lambda: issuer.token("rsa-1", signer="stranger"),
        "expired": lambda: issuer.token("rsa-1", exp=now - 120),
        "not yet valid": lambda: issuer.token("ec-1", nbf=now + 300),
        "issued in the future": lambda: issuer.token("ec-1", iat=now + 300),
        "wrong audience": lambda: issuer.token("ed25519-1", aud="someone-else"),
        "no audience": lambda: issuer.token("ed25519-1", aud=None),
        "wrong issuer": lambda: issuer.token("rsa-1", iss="https://evil.example/"),
        "unknown kid": lambda: issuer.token("never-published", signer="stranger"),
        "alg none": lambda: issuer.forge("rsa-1", "none"),
        "HS256 keyed by the public PEM": lambda: issuer.forge("rsa-1", "HS256", rsa.public_pem()),
        "HS256 keyed by the public JWK": lambda: issuer.forge(
            "rsa-1", "HS256", json.dumps(rsa.public_jwk()).encode()),
        "RSA kid with an ES256 header": lambda: issuer.token("rsa-1", signer="ec-1"),
        "garbage": lambda: "not.a.jwt",
        "header not an object": lambda: "WzFd." + issuer.token("rsa-1").split(".", 1)[1],
        "kid not a string": lambda: b64(b'{"alg":"RS256","kid":5}') + "."
        + issuer.token("rsa-1").split(".", 1)[1],
        "signature cut off": lambda: issuer.token("ec-1").rsplit(".", 1)[0] + ".",
        "no exp": lambda: issuer.token("rsa-1", exp=None),
        "no sub": lambda: issuer.token("rsa-1", sub=None),
        "no tenant": lambda: issuer.token("rsa-1", tid=None),
        "groups not a list": lambda: issuer.token("rsa-1", groups={"admin": True}),
        "exp past year 9999": lambda: issuer.token("rsa-1", exp=10**20),
    }
    assert await reason_of(auth, tokens[case]()) == reason


async def test_unknown_kid_refetches_once_then_is_rate_limited(
        auth: JwtAuthenticator, server: JwksServer) -> None:
    idp = server.issuer
    start_fetches = server.fetches
    for _ in range(20):
        await auth.authenticate(idp.token("rsa-1"))
    assert server.fetches == start_fetches  # never per request

    rotated = idp.add("ec", f"rotated-{secrets.token_hex(4)}")
    assert (await auth.authenticate(idp.token(rotated.kid))).key_id == f"jwt:{rotated.kid}"
    assert server.fetches == start_fetches + 1

    flood = [idp.token(f"random-{i}", signer="rsa-1") for i in range(200)]
    results = await asyncio.gather(*(auth.authenticate(t) for t in flood), return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) and r.reason == "unknown_kid" for r in results)
    late = idp.add("ed25519", f"late-{secrets.token_hex(4)}")
    assert await reason_of(auth, idp.token(late.kid)) == "unknown_kid"  # within 60 s: no fetch
    assert server.fetches == start_fetches + 1


async def test_a_flood_of_unknown_kids_at_once_costs_one_fetch(
        auth: JwtAuthenticator, server: JwksServer) -> None:
    before = server.fetches  # the first unknown kid may refetch at once; the rest wait for it
    flood = [server.issuer.token(f"flood-{i}", signer="rsa-1") for i in range(100)]
    await asyncio.gather(*(auth.authenticate(t) for t in flood), return_exceptions=True)
    assert server.fetches == before + 1


async def test_a_failed_refresh_keeps_the_last_good_set_and_refuses_unknown_kids_with_503(
        auth: JwtAuthenticator, server: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    """While the JWKS cannot be fetched, an unknown kid may be a new key or a forged one:
    503 (retry later), not 401 (your token is bad); the known keys go on verifying."""
    server.failing = True
    try:
        with caplog.at_level(logging.WARNING, logger="modelfence.identity.jwt"), \
                pytest.raises(Unavailable) as down:
            await auth.authenticate(server.issuer.token("nope", signer="rsa-1"))
        assert down.value.status == 503 and down.value.reason == "identity_unavailable"
        assert down.value.message == "the identity provider cannot be reached; retry later"
        assert 1 <= int(down.value.headers()["Retry-After"]) <= 60
        assert "failed: HTTP 503; the last good 3 key(s) verify" in caplog.text
        assert (await auth.authenticate(server.issuer.token("ed25519-1"))).id == "alice"
    finally:
        server.failing = False


async def test_a_stopped_jwks_server_past_max_staleness_refuses_every_jwt(
        issuer: Issuer, caplog: pytest.LogCaptureFixture) -> None:
    """The JWKS server stopped: known keys verify for `jwks_max_stale_s` after the last good
    fetch, then every JWT gets 503; a JWKS that answers again lets them in at once."""
    failures: list[str] = []
    own = Issuer(keys=dict(issuer.keys), published=list(issuer.published))
    server = JwksServer(own).start()
    auth = JwtAuthenticator(jwt_settings(jwks_url=server.url, jwks_max_stale_s=1.5,
                                         jwks_min_refresh_s=1, jwks_max_age_s=0),
                            on_fetch_error=failures.append)
    await auth.start()
    try:
        server.stop()
        with pytest.raises(Unavailable):
            await auth.authenticate(own.token("nope", signer="rsa-1"))
        assert failures == ["unreachable"]
        assert (await auth.authenticate(own.token("rsa-1"))).id == "alice"  # still fresh
        await asyncio.sleep(1.6)
        for _ in range(5):
            with pytest.raises(Unavailable) as stale:
                await auth.authenticate(own.token("rsa-1"))
            assert stale.value.reason == "identity_unavailable"
        assert failures == ["unreachable"] * 2  # one more fetch tried, not one per request
        with JwksServer(own, port=server.port):  # the identity provider answers again
            await asyncio.sleep(1.0)
            assert (await auth.authenticate(own.token("rsa-1"))).id == "alice"
        assert "answers again" in caplog.text
    finally:
        await auth.close()


async def test_a_jwks_redirect_is_not_followed(server: JwksServer, issuer: Issuer) -> None:
    """Following it would fetch keys from a place the https-only rule never checked."""
    failures: list[str] = []
    with JwksServer(Issuer()) as mover:
        mover.redirect_to = server.url
        auth = JwtAuthenticator(jwt_settings(jwks_url=mover.url),
                                on_fetch_error=failures.append)
        with pytest.raises(ConfigurationError, match="HTTP 302: a redirect, not followed"):
            await auth.start()
    assert server.fetches == 0 and failures == ["redirect"]


async def test_periodic_refresh_drops_a_removed_key(issuer: Issuer) -> None:
    idp = Issuer(keys=dict(issuer.keys), published=["rsa-1", "ec-1"])
    with JwksServer(idp) as srv:
        auth = JwtAuthenticator(jwt_settings(jwks_url=srv.url, jwks_max_age_s=0.2))
        await auth.start()
        try:
            await auth.authenticate(idp.token("ec-1"))
            idp.published.remove("ec-1")  # the IdP withdraws a compromised key
            for _ in range(50):  # the refresher runs every 0.2 s; allow a busy machine 10 s
                if auth.kids == frozenset({"rsa-1"}):
                    break
                await asyncio.sleep(0.2)
            assert auth.kids == frozenset({"rsa-1"})
            assert await reason_of(auth, idp.token("ec-1")) == "unknown_kid"
        finally:
            await auth.close()


async def test_jwks_file_is_resolved_and_reread_on_unknown_kid(
        tmp_path: Path, issuer: Issuer) -> None:
    idp = Issuer(keys=dict(issuer.keys), published=["rsa-1"])
    (tmp_path / "jwks.json").write_text(json.dumps(idp.jwks()))
    config = tmp_path / "modelfence.yaml"
    config.write_text(f"identity:\n  jwt: {{issuer: '{ISSUER}', audiences: [{AUDIENCE}], "
                      "jwks_file: jwks.json, tenant: fixed-tenant, models_claim: scope, "
                      "models_prefix: 'model:'}\n")
    settings = load_settings(config).identity.jwt
    assert settings is not None and settings.jwks_file == tmp_path / "jwks.json"
    auth = JwtAuthenticator(settings)
    await auth.start()
    try:
        p = await auth.authenticate(idp.token("rsa-1", scope="openid model:digits model:"))
        assert (p.tenant, p.models) == ("fixed-tenant", ("digits",))
        idp.published.append("ec-1")
        (tmp_path / "jwks.json").write_text(json.dumps(idp.jwks()))
        assert (await auth.authenticate(idp.token("ec-1"))).key_id == "jwt:ec-1"
    finally:
        await auth.close()


async def test_symmetric_weak_and_mismatched_keys_are_never_loaded(
        tmp_path: Path, issuer: Issuer) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    weak = SigningKey("weak", "RS256", small).public_jwk()
    doc = {"keys": [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        weak,
        issuer.keys["ec-1"].public_jwk() | {"kid": "says-rsa", "alg": "RS256"},
        issuer.keys["ec-1"].public_jwk() | {"kid": "enc-key", "use": "enc"},
        issuer.keys["ed25519-1"].public_jwk(),
    ]}
    (tmp_path / "jwks.json").write_text(json.dumps(doc))
    auth = JwtAuthenticator(jwt_settings(jwks_file=str(tmp_path / "jwks.json")))
    await auth.start()
    try:
        assert auth.kids == frozenset({"ed25519-1"})
    finally:
        await auth.close()


async def test_an_algorithm_off_the_allow_list_is_refused(server: JwksServer) -> None:
    auth = JwtAuthenticator(jwt_settings(jwks_url=server.url, algorithms=["ES256"]))
    await auth.start()
    try:
        assert await reason_of(auth, server.issuer.token("rsa-1")) == "alg_not_allowed"
        assert (await auth.authenticate(server.issuer.token("ec-1"))).id == "alice"
    finally:
        await auth.close()


async def test_an_unreachable_jwks_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    auth = JwtAuthenticator(jwt_settings(
        jwks_url=f"http://svc:hunter2@127.0.0.1:{port}/jwks?token=s3cr3t#frag"))
    with pytest.raises(ConfigurationError) as info:
        await auth.start()
    message = str(info.value)
    assert message.startswith(f"identity.jwt: cannot use the JWKS from http://127.0.0.1:{port}"
                              "/jwks: cannot connect"), message
    assert "\n" not in message and "hunter2" not in message and "s3cr3t" not in message
    await auth.close()

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    for name, expected in [("bad.json", "not JSON"), ("empty.json", "holds no signing key"),
                           ("absent.json", "cannot read file")]:
        auth = JwtAuthenticator(jwt_settings(jwks_file=str(tmp_path / name)))
        with pytest.raises(ConfigurationError, match=expected):
            await auth.start()


async def test_dispatch_by_shape(issuer: Issuer, server: JwksServer) -> None:
    class Keys:
        async def authenticate(self, token: str) -> Any:
            raise Unauthenticated(reason="unknown_key")

    identity = settings_from_mapping({"identity": {
        "api_keys": False, "jwt": {"issuer": ISSUER, "audiences": [AUDIENCE],
                                   "jwks_url": server.url, "tenant_claim": "tid"}}}).identity
    only_jwt = build_authenticator(identity, Keys())  # type: ignore[arg-type]
    await only_jwt.start()
    try:
        assert (await only_jwt.authenticate(issuer.token("rsa-1"))).id == "alice"
        with pytest.raises(Unauthenticated) as info:
            await only_jwt.authenticate("mf_0123456789abcdef_" + "A" * 43)
        assert info.value.reason == "malformed_token"
    finally:
        await only_jwt.close()
    only_keys = BearerAuthenticator(api_keys=Keys(), jwt=None)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated) as info:
        await only_keys.authenticate(issuer.token("rsa-1"))
    assert info.value.reason == "unknown_key"


@pytest.mark.parametrize(("jwt", "expected"), [
    ("{issuer: i, audiences: [a], jwks_file: j, tenant: t, algorithms: [RS256, HS256]}",
     "identity.jwt.algorithms: value error, HS256 not allowed; only asymmetric"),
    ("{issuer: i, audiences: [a], jwks_file: j, tenant: t, algorithms: [none]}",
     "none not allowed"),
    ("{issuer: i, audiences: [a], tenant: t}",
     "identity.jwt: value error, give exactly one of jwks_url or jwks_file"),
    ("{issuer: i, audiences: [a], jwks_file: j, jwks_url: 'https://x/j', tenant: t}",
     "give exactly one of jwks_url or jwks_file"),
    ("{issuer: i, audiences: [a], jwks_file: j}", "give exactly one of tenant_claim"),
    ("{issuer: i, audiences: [], jwks_file: j, tenant: t}", "identity.jwt.audiences: list"),
    ("{audiences: [a], jwks_file: j, tenant: t}", "identity.jwt.issuer: field required"),
    ("{issuer: i, audiences: [a], jwks_url: 'http://idp.example.com/j', tenant: t}",
     "identity.jwt.jwks_url: value error, use https://"),
    ("{issuer: i, audiences: [a], jwks_file: j, tenant: t, jwks_min_refresh_s: 0}",
     "identity.jwt.jwks_min_refresh_s: input should be greater than or equal to 1"),
    ("{issuer: i, audiences: [a], jwks_file: j, tenant: t, claims: {}}",
     "identity.jwt.claims: unknown key"),
])
def test_config_errors_read_in_one_line(tmp_path: Path, jwt: str, expected: str) -> None:
    path = tmp_path / "modelfence.yaml"
    path.write_text(f"identity:\n  jwt: {jwt}\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, \
        message


def test_turning_every_credential_off_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "modelfence.yaml"
    path.write_text("identity: {api_keys: false}\n")
    with pytest.raises(ConfigurationError, match="identity: value error, api_keys is off"):
        load_settings(path)
