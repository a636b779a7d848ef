"""Credentials through real HTTP: every failure is the same 401, and no key is ever logged."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from ..support import Gateway, cli, digits_rows, infer_body

BODY = json.dumps(infer_body(digits_rows(1))).encode()


async def infer(gw: Gateway, authorization: str | None) -> tuple[int, dict[str, object], str]:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v2/models/digits/infer", data=BODY, headers=headers) as r:
        return r.status, await r.json(), r.headers.get("WWW-Authenticate", "")


def unknown_key_like(key: str) -> str:
    """Same key id, different secret: a forged key for an existing id."""
    prefix, key_id, secret = key.split("_", 2)
    return f"{prefix}_{key_id}_{'A' * len(secret)}"


async def test_every_credential_failure_is_the_same_401(local_gateway: Gateway) -> None:
    good = local_gateway.key()
    revoked = local_gateway.key()
    key_id = revoked.split("_")[1]
    cli("keys", "revoke", key_id, "--config", str(local_gateway.config))
    expired = local_gateway.key(expires_in="1s")
    await asyncio.sleep(1.2)
    cases = {
        "missing": None,
        "empty": "",
        "not bearer": f"Basic {good}",
        "bearer without token": "Bearer ",
        "malformed": "Bearer hello",
        "too long": "Bearer " + "x" * 10000,
        "unknown id": "Bearer mf_0123456789abcdef_" + "A" * 43,
        "forged secret": f"Bearer {unknown_key_like(good)}",
        "revoked": f"Bearer {revoked}",
        "expired": f"Bearer {expired}",
    }
    answers = {}
    for name, header in cases.items():
        deadline = time.monotonic() + 3
        while True:  # revocation may take one cache period (1 s) to be seen
            status, body, challenge = await infer(local_gateway, header)
            if status == 401 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        answers[name] = (status, body, challenge)
    assert {a[0] for a in answers.values()} == {401}, answers
    assert {json.dumps(a[1]) for a in answers.values()} == {
        json.dumps({"error": "missing or invalid credentials"})}
    assert {a[2] for a in answers.values()} == {'Bearer realm="modelfence"'}
    status, _, _ = await infer(local_gateway, f"Bearer {good}")
    assert status == 200


async def test_metadata_needs_a_key_too(local_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{local_gateway.url}/v2/models/digits") as r:
        assert r.status == 401


async def test_unknown_model_is_not_revealed_to_anonymous_callers(local_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s, s.post(
            f"{local_gateway.url}/v2/models/secret-model/infer", data=BODY) as r:
        assert r.status == 401


async def test_keys_never_appear_in_logs_errors_or_audit(local_gateway: Gateway) -> None:
    key = local_gateway.key()
    forged = unknown_key_like(key)
    secret_part = key.split("_", 2)[2]
    await infer(local_gateway, f"Bearer {key}")
    await infer(local_gateway, f"Bearer {forged}")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{local_gateway.url}/v2/models/digits/infer", data=b"{bad",
                          headers={"Authorization": f"Bearer {key}"}) as r:
            error_text = await r.text()
        async with s.get(f"{local_gateway.admin_url}/metrics") as r:
            metrics_text = await r.text()
    await asyncio.sleep(0.3)  # audit and logs are written after the answer
    listing = cli("keys", "list", "--json", "--config", str(local_gateway.config)).stdout
    haystacks = {
        "gateway log": local_gateway.log.read_text(),
        "audit log": (local_gateway.folder / "audit.jsonl").read_text(),
        "error body": error_text,
        "metrics": metrics_text,
        "keys list": listing,
        "key store file": (local_gateway.folder / "keys.db").read_bytes().decode("latin-1"),
    }
    assert "DEBUG" in haystacks["gateway log"] or "INFO" in haystacks["gateway log"]
    for where, text in haystacks.items():
        for secret in (secret_part, forged.split("_", 2)[2], local_gateway.admin_token):
            assert secret not in text, f"a secret leaked into the {where}"


@pytest.mark.parametrize("bad_auth", [None, "Bearer wrong-admin-token", "Bearer "])
async def test_admin_api_refuses_without_admin_token(local_gateway: Gateway,
                                                     bad_auth: str | None) -> None:
    headers = {"Authorization": bad_auth} if bad_auth else {}
    async with aiohttp.ClientSession() as s, s.get(f"{local_gateway.admin_url}/admin/keys",
                                                   headers=headers) as r:
        assert r.status == 401
        assert await r.json() == {"error": "missing or invalid credentials"}


async def test_a_model_key_is_not_an_admin_key(local_gateway: Gateway) -> None:
    key = local_gateway.key()
    async with aiohttp.ClientSession() as s, s.get(
            f"{local_gateway.admin_url}/admin/keys",
            headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 401


def test_the_body_of_an_unauthenticated_request_is_never_read(local_gateway: Gateway) -> None:
    """A request that declares a large body and sends none is answered 401 at once: identity
    runs before the body is read, so an anonymous caller cannot make the gateway wait on
    (or buffer) its body."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(local_gateway.url)
    head = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: {url.hostname}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000000\r\n"
            "Authorization: Bearer mf_0000000000000000_nope\r\n\r\n").encode()
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80),
                                  timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head)  # and not one byte of the promised body
        answer = sock.recv(4096).decode("latin-1")
        waited = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 401"), answer[:200]
    assert waited < 2.0, f"answered after {waited:.2f} s: the gateway waited for the body"
