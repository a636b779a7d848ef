"""The admin API manages keys like the CLI, behind the admin credential."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from ..support import Gateway, digits_rows, infer_body


async def admin(gw: Gateway, method: str, path: str, body: Any = None,
                raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {gw.admin_token}"}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with aiohttp.ClientSession() as s, s.request(method, f"{gw.admin_url}{path}", data=data,
                                                       headers=headers) as r:
        return r.status, await r.json()


async def test_create_use_list_and_revoke_a_key(local_gateway: Gateway) -> None:
    status, created = await admin(local_gateway, "POST", "/admin/keys", {
        "principal": "svc-scoring", "tenant": "acme", "groups": ["batch"],
        "models": ["digits"], "expires_in": "7d", "description": "nightly scoring"})
    assert status == 201, created
    key, key_id = created["key"], created["key_id"]
    assert key.startswith(f"mf_{key_id}_")
    assert "digest" not in created

    body = json.dumps(infer_body(digits_rows(1))).encode()
    async with aiohttp.ClientSession() as s, s.post(
            f"{local_gateway.url}/v2/models/digits/infer", data=body,
            headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200

    status, listing = await admin(local_gateway, "GET", "/admin/keys")
    assert status == 200
    mine = next(k for k in listing["keys"] if k["key_id"] == key_id)
    assert mine["principal"] == "svc-scoring" and mine["groups"] == ["batch"]
    assert mine["status"] == "active" and mine["expires_at"]
    assert all("key" not in k and "digest" not in k for k in listing["keys"])
    assert key not in json.dumps(listing)

    status, revoked = await admin(local_gateway, "DELETE", f"/admin/keys/{key_id}")
    assert (status, revoked) == (200, {"key_id": key_id, "revoked": True})
    async with aiohttp.ClientSession() as s, s.post(
            f"{local_gateway.url}/v2/models/digits/infer", data=body,
            headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 401  # revoked through this replica: refused at once

    await asyncio.sleep(0.3)
    admin_records = [(r["action"], r["key_id"], r["status"]) for r in
                     local_gateway.audit_records() if r["action"].startswith("admin:")]
    assert ("admin:create-key", key_id, 201) in admin_records
    assert ("admin:revoke-key", key_id, 200) in admin_records
    assert key.split("_", 2)[2] not in local_gateway.audit_text()
    assert local_gateway.admin_token not in local_gateway.audit_text()


@pytest.mark.parametrize(("body", "field"), [
    ({"tenant": "acme"}, "principal"),
    ({"principal": "a", "tenant": "acme", "models": "digits"}, "models"),
    ({"principal": "a", "tenant": "acme", "colour": "red"}, "colour"),
    ({"principal": "a b", "tenant": "acme"}, "principal"),
    ({"principal": "a", "tenant": "acme", "expires_in": "soon"}, "expires_in"),
    ({"principal": "a", "tenant": "acme", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"principal": "a", "tenant": "acme", "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
])
async def test_bad_key_requests_get_400_naming_the_field(local_gateway: Gateway,
                                                         body: Any, field: str) -> None:
    status, answer = await admin(local_gateway, "POST", "/admin/keys", body)
    assert status == 400, answer
    assert answer["error"].startswith(field), answer


async def test_admin_non_json_and_oversized(local_gateway: Gateway) -> None:
    status, answer = await admin(local_gateway, "POST", "/admin/keys", raw=b"{nope")
    assert (status, answer) == (400, {"error": "request body is not valid JSON"})
    status, answer = await admin(local_gateway, "POST", "/admin/keys", raw=b" " * 100_000)
    assert status == 413


async def test_revoking_an_unknown_key_is_404(local_gateway: Gateway) -> None:
    status, answer = await admin(local_gateway, "DELETE", "/admin/keys/ffffffffffffffff")
    assert status == 404
    assert "no key" in answer["error"]
