"""JWT bearer identities through a real gateway process and a JWKS served on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..jwks_server import AUDIENCE, ISSUER, Issuer, JwksServer
from ..support import Gateway, cli, digits_rows, free_port, infer_body

BODY = json.dumps(infer_body(digits_rows(1))).encode()
KINDS = ("rsa", "ec", "ed25519")


def jwt_config(jwks_url: str) -> dict[str, Any]:
    return {"identity": {"jwt": {
        "issuer": ISSUER, "audiences": [AUDIENCE], "jwks_url": jwks_url, "tenant_claim": "tid",
        "groups_claim": "groups", "models_claim": "models",
        "attributes": {"clearance": "clearance"}}}}


def two_models(digits_files: dict[str, Path]) -> list[dict[str, Any]]:
    skops = str(digits_files["skops"])
    return [{"name": "digits", "backend": {"type": "skops", "path": skops}},
            {"name": "digits-2", "backend": {"type": "skops", "path": skops}}]


def new_issuer() -> Issuer:
    idp = Issuer()
    for kind in KINDS:
        idp.add(kind, f"{kind}-1")
    idp.add("rsa", "stranger", publish=False)
    return idp


@pytest.fixture(scope="module")
def idp_server() -> Iterator[JwksServer]:
    with JwksServer(new_issuer()) as srv:
        yield srv


@pytest.fixture(scope="module")
def jwt_gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path],
                idp_server: JwksServer) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gw-jwt"), two_models(digits_files),
                 extra=jwt_config(idp_server.url)).start()
    yield gw
    gw.stop()


async def infer(gw: Gateway, token: str | None, model: str = "digits"
                ) -> tuple[int, dict[str, Any], str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v2/models/{model}/infer", data=BODY, headers=headers) as r:
        return r.status, await r.json(), r.headers.get("WWW-Authenticate", "")


async def metric_samples(gw: Gateway) -> dict[tuple[str, str], float]:
    """Denials by reason and outbound errors by client/kind, from the admin listener."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(f"{gw.admin_url}/metrics") as r:
        text = await r.text()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelfence_denials_total":
                out[(sample.name, sample.labels["reason"])] = sample.value
            elif sample.name == "modelfence_outbound_errors_total":
                key = f"{sample.labels['client']}/{sample.labels['kind']}"
                out[(sample.name, key)] = sample.value
    return out


async def audit_for(gw: Gateway, count: int) -> list[dict[str, Any]]:
    """The last `count` audit records, once the gateway has written them."""
    deadline = time.monotonic() + 5
    while len(gw.audit_records()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return gw.audit_records()[-count:]


async def test_a_valid_token_of_each_algorithm_is_let_in(
        jwt_gateway: Gateway, idp_server: JwksServer) -> None:
    before = len(jwt_gateway.audit_records())
    for kind in KINDS:
        status, body, _ = await infer(jwt_gateway, idp_server.issuer.token(f"{kind}-1"))
        assert status == 200, body
        assert body["model_name"] == "digits"
    records = await audit_for(jwt_gateway, before + 3)
    assert [(r["principal"], r["tenant"], r["key_id"], r["status"]) for r in records[-3:]] == [
        ("alice", "acme", f"jwt:{kind}-1", 200) for kind in KINDS]


async def test_every_jwt_failure_is_the_same_401(
        jwt_gateway: Gateway, idp_server: JwksServer) -> None:
    idp = idp_server.issuer
    now = int(time.time())
    rsa = idp.keys["rsa-1"]
    cases = {
        "bad_signature": idp.token("rsa-1", signer="stranger"),
        "expired_token": idp.token("ec-1", exp=now - 120),
        "not_yet_valid": idp.token("ed25519-1", nbf=now + 300),
        "wrong_audience": idp.token("rsa-1", aud="another-api"),
        "wrong_issuer": idp.token("ec-1", iss="https://evil.example/"),
        "unknown_kid": idp.token("not-in-the-jwks", signer="stranger"),
        "alg_not_allowed": idp.forge("rsa-1", "none"),
        "alg_not_allowed/hs256": idp.forge("rsa-1", "HS256", rsa.public_pem()),
        "malformed_token": "garbage.garbage.garbage",
        "missing_claim": idp.token("rsa-1", tid=None),
    }
    before = len(jwt_gateway.audit_records())
    answers = {name: await infer(jwt_gateway, token) for name, token in cases.items()}
    assert {a[0] for a in answers.values()} == {401}, answers
    assert {json.dumps(a[1]) for a in answers.values()} == {
        json.dumps({"error": "missing or invalid credentials"})}
    assert {a[2] for a in answers.values()} == {'Bearer realm="modelfence"'}
    records = await audit_for(jwt_gateway, before + len(cases))
    assert [r["reason"] for r in records[-len(cases):]] == [n.split("/")[0] for n in cases]


async def test_claims_grant_models_and_api_keys_still_work(
        jwt_gateway: Gateway, idp_server: JwksServer) -> None:
    idp = idp_server.issuer
    status, body, _ = await infer(jwt_gateway, idp.token("ec-1"), model="digits-2")
    assert status == 403, body
    status, _, _ = await infer(jwt_gateway, idp.token("ec-1", models="digits digits-2"),
                               model="digits-2")
    assert status == 200
    status, _, _ = await infer(jwt_gateway, jwt_gateway.key(), model="digits-2")
    assert status == 200


async def test_tokens_never_reach_the_log_or_the_audit(
        jwt_gateway: Gateway, idp_server: JwksServer) -> None:
    idp = idp_server.issuer
    tokens = [idp.token("rsa-1"), idp.token("ec-1", exp=int(time.time()) - 120),
              idp.token("ed25519-1", aud="x"), idp.token("whatever", signer="stranger"),
              idp.forge("ec-1", "none")]
    for token in tokens:
        await infer(jwt_gateway, token)
    await asyncio.sleep(0.3)  # audit and logs are written after the answer
    texts = {"gateway log": jwt_gateway.log.read_text(),
             "audit log": (jwt_gateway.folder / "audit.jsonl").read_text()}
    assert "JWKS from http://127.0.0.1" in texts["gateway log"]
    for where, text in texts.items():
        for token in tokens:
            for part in token.split("."):
                assert len(part) < 16 or part not in text, f"a token leaked into the {where}"


async def test_rotation_is_picked_up_by_one_refetch_never_per_request(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    with JwksServer(new_issuer()) as server:
        idp = server.issuer
        gw = Gateway(tmp_path / "gw", two_models(digits_files), extra=jwt_config(server.url))
        gw.start()
        try:
            fetched_at_start = server.fetches
            for _ in range(30):
                assert (await infer(gw, idp.token("rsa-1")))[0] == 200
            assert server.fetches == fetched_at_start  # never per request

            rotated = idp.add("ec", "rotated-2")
            assert (await infer(gw, idp.token(rotated.kid)))[0] == 200
            assert server.fetches == fetched_at_start + 1

            flood = [idp.token(f"random-{i}", signer="rsa-1") for i in range(40)]
            statuses = await asyncio.gather(*(infer(gw, t) for t in flood))
            assert {s[0] for s in statuses} == {401}
            late = idp.add("ed25519", "late-3")  # inside jwks_min_refresh_s: not fetched yet
            assert (await infer(gw, idp.token(late.kid)))[0] == 401
            assert server.fetches == fetched_at_start + 1
            assert (await infer(gw, idp.token(rotated.kid)))[0] == 200
        finally:
            gw.stop()


async def test_a_jwks_outage_is_503_for_unknown_kids_then_for_every_jwt(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    """The JWKS server on loopback stopped under a running gateway: known keys keep
    verifying up to `jwks_max_stale_s`, a token naming another key id is 503 with
    Retry-After (the gateway cannot tell a new key from a forged one), and past the
    staleness limit every JWT is 503; never a 401 that would call the token bad."""
    idp = new_issuer()
    server = JwksServer(idp).start()
    config = jwt_config(server.url)
    config["identity"]["jwt"].update(jwks_max_stale_s=5, jwks_min_refresh_s=1, jwks_max_age_s=0)
    gw = Gateway(tmp_path / "gw", two_models(digits_files), extra=config).start()
    try:
        assert (await infer(gw, idp.token("rsa-1")))[0] == 200
        # Pin the clock to one known fetch: a key added while the JWKS answers is fetched
        # for its first token (more than jwks_min_refresh_s after any earlier fetch, the one
        # at start or, on a slow machine, one the first request made once 5 s had passed).
        await asyncio.sleep(1.1)
        before = idp.add("ec", "rotated-before-outage")
        assert (await infer(gw, idp.token(before.kid)))[0] == 200
        started = time.monotonic()
        server.stop()
        idp.add("ec", "rotated-during-outage")
        # within jwks_min_refresh_s of a good fetch an unknown kid is taken for a forgery
        # (401, as in the flood test above); after it, the failed fetch makes it a 503
        await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - started)))
        headers = {"Authorization": f"Bearer {idp.token('rotated-during-outage')}"}
        async with aiohttp.ClientSession() as s, s.post(
                f"{gw.url}/v2/models/digits/infer", data=BODY, headers=headers) as r:
            assert r.status == 503
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert await r.json() == {
                "error": "the identity provider cannot be reached; retry later"}
        assert (await infer(gw, idp.token("rsa-1")))[0] == 200  # known key, not yet stale
        await asyncio.sleep(max(0.0, 5.2 - (time.monotonic() - started)))
        statuses = [(await infer(gw, idp.token(kid)))[0] for kid in ("rsa-1", "ec-1")]
        assert statuses == [503, 503]
        records = await audit_for(gw, 6)  # every request of this gateway, the first one too
        assert [r["status"] for r in records] == [200, 200, 503, 200, 503, 503]
        counted = await metric_samples(gw)
        assert counted[("modelfence_denials_total", "identity_unavailable")] == 3
        assert counted[("modelfence_outbound_errors_total", "jwks/unreachable")] >= 2
    finally:
        gw.stop()
    log = gw.log.read_text()
    assert "JWKS refresh" in log and "failed: cannot connect" in log
    assert "Traceback" not in log


def test_an_unreachable_jwks_refuses_to_start(tmp_path: Path,
                                              digits_files: dict[str, Path]) -> None:
    port = free_port()
    url = f"http://svc:hunter2@127.0.0.1:{port}/jwks.json?access_token=s3cr3t"
    gw = Gateway(tmp_path, two_models(digits_files), extra=jwt_config(url))
    gw.write_config()
    result = cli("serve", "--config", str(gw.config), check=False)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert (f"identity.jwt: cannot use the JWKS from http://127.0.0.1:{port}/jwks.json: "
            "cannot connect") in message, message
    assert len(message.splitlines()) == 1
    assert "hunter2" not in result.stderr + result.stdout
    assert "s3cr3t" not in result.stderr + result.stdout
