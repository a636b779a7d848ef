"""Policy through a real gateway: decisions, reasons, reloads, fail closed, audit trail."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..support import Gateway, cli, digits_rows, infer_body

POLICY_V1 = '''
@id("own-grants")
permit(principal, action in [Action::"infer", Action::"metadata"], resource)
when { principal.models.contains(resource.name) };

@id("clearance")
forbid(principal, action, resource)
when { resource.sensitivity > principal.clearance };

@id("grant-networks")
forbid(principal, action, resource) unless { context.network_allowed };

@id("grant-purpose")
forbid(principal, action, resource)
when { principal has purpose && principal.purpose != context.purpose };

@id("runaway")
forbid(principal, action, resource)
when { context.queries + 9223372036854775000 > 9223372036854775806 };
'''
BODY = json.dumps(infer_body(digits_rows(1))).encode()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
       ) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("policy-gw")
    (folder / "policies").mkdir()
    (folder / "policies" / "main.cedar").write_text(POLICY_V1)
    models = [
        {"name": "public", "backend": {"type": "skops", "path": str(digits_files["skops"])},
         "attributes": {"owner": "acme", "sensitivity": 0, "tags": ["demo"]}},
        {"name": "secret", "backend": {"type": "skops", "path": str(digits_files["skops"])},
         "attributes": {"owner": "acme", "sensitivity": 3}},
    ]
    gateway = Gateway(folder, models, extra={
        "policy": {"files": ["policies/main.cedar"], "state_dir": "state"}}).start()
    yield gateway
    gateway.stop()


def mint(gw: Gateway, *extra: str, models: tuple[str, ...] = ("public", "secret")) -> str:
    """A key for a new principal each time (query counts are per principal)."""
    args = ["keys", "create", "--config", str(gw.config), "--principal",
            f"user-{uuid.uuid4().hex[:8]}", "--tenant", "acme", "--json", *extra]
    for m in models:
        args += ["--model", m]
    return str(json.loads(cli(*args).stdout)["key"])


async def infer(gw: Gateway, key: str, model: str = "public",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v2/models/{model}/infer", data=BODY, headers=h) as r:
        return r.status, await r.json()


async def admin(gw: Gateway, method: str, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.request(
            method, f"{gw.admin_url}{path}",
            headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        return r.status, await r.json()


async def test_permit_and_forbid_with_reasons(gw: Gateway) -> None:
    low = mint(gw)
    high = mint(gw, "--clearance", "3")
    assert (await infer(gw, low, "public"))[0] == 200
    assert await infer(gw, low, "secret") == (
        403, {"error": "access denied: denied by policy clearance"})
    assert (await infer(gw, high, "secret"))[0] == 200
    other = mint(gw, "--clearance", "3", models=("public",))
    assert await infer(gw, other, "secret") == (
        403, {"error": "access denied: no policy permits infer on model 'secret'"})


async def test_limited_distribution_networks_and_purpose(gw: Gateway) -> None:
    outside = mint(gw, "--network", "10.0.0.0/8")
    inside = mint(gw, "--network", "127.0.0.0/8", "--network", "10.0.0.0/8")
    assert await infer(gw, outside) == (403, {"error": "access denied: denied by policy "
                                                       "grant-networks"})
    assert (await infer(gw, inside))[0] == 200
    research = mint(gw, "--purpose", "research")
    assert (await infer(gw, research))[0] == 403
    assert (await infer(gw, research, headers={"X-Modelfence-Purpose": "ads"}))[0] == 403
    assert (await infer(gw, research,
                        headers={"X-Modelfence-Purpose": "research"}))[0] == 200


async def test_engine_failure_fails_closed_with_503(gw: Gateway) -> None:
    key = mint(gw)
    status = 200
    for _ in range(20):  # "runaway" overflows once the principal's count passes 807 rows
        async with aiohttp.ClientSession() as s, s.post(
                f"{gw.url}/v2/models/public/infer",
                data=json.dumps(infer_body(digits_rows(64))).encode(),
                headers={"Authorization": f"Bearer {key}"}) as r:
            status = r.status
            doc = await r.json()
        if status != 200:
            break
    assert status == 503
    assert doc == {"error": "the policy engine could not decide; request denied"}
    await asyncio.sleep(0.3)
    assert "policy engine failure in infer, request denied: policy evaluation failed" in (
        gw.log.read_text())
    async with aiohttp.ClientSession() as s, s.get(f"{gw.admin_url}/metrics") as r:
        assert "modelfence_policy_errors_total 1.0" in await r.text()


async def test_audit_records_carry_the_policy_ids(gw: Gateway) -> None:
    key = mint(gw)
    await infer(gw, key, "public")
    await infer(gw, key, "secret")
    await asyncio.sleep(0.3)
    key_id = key.split("_")[1]
    mine = [r for r in gw.audit_records()  # the calls, not the key's creation (admin:)
            if r["key_id"] == key_id and not r["action"].startswith("admin:")]
    assert [(r["model"], r["decision"], r["policy_ids"]) for r in mine] == [
        ("public", "allow", ["own-grants"]), ("secret", "deny", ["clearance"])]
    assert all(key.split("_", 2)[2] not in json.dumps(r) for r in mine)


async def test_admin_reload_applies_good_and_refuses_bad_sets(gw: Gateway) -> None:
    policy_file = gw.folder / "policies" / "main.cedar"
    key = mint(gw)
    try:
        policy_file.write_text(POLICY_V1 + '\n@id("no-public")\nforbid(principal, action, '
                               'resource) when { resource.tags.contains("demo") };\n')
        status, body = await admin(gw, "POST", "/admin/policy/reload")
        assert status == 200 and "no-public" in [p["id"] for p in body["policies"]]
        assert await infer(gw, key) == (403, {"error": "access denied: denied by policy "
                                                       "no-public"})
        policy_file.write_text(POLICY_V1 + '\n@id("typo")\npermit(principal, action, resource)'
                               ' when { principal.tenent == "x" };\n')
        status, body = await admin(gw, "POST", "/admin/policy/reload")
        assert status == 422
        assert "main.cedar:" in body["error"] and "tenent" in body["error"]
        assert "the current set stays" in body["error"]
        assert (await infer(gw, key))[0] == 403  # still the last good set (with no-public)
    finally:
        policy_file.write_text(POLICY_V1)
        assert (await admin(gw, "POST", "/admin/policy/reload"))[0] == 200
    assert (await infer(gw, key))[0] == 200


async def test_sighup_respawns_workers_and_a_bad_file_keeps_the_last_good_set(
        gw: Gateway) -> None:
    assert gw.proc is not None
    policy_file = gw.folder / "policies" / "main.cedar"
    key = mint(gw)
    try:
        policy_file.write_text(POLICY_V1.replace('@id("own-grants")\npermit',
                                                 '@id("own-grants")\nforbid'))
        gw.proc.send_signal(signal.SIGHUP)
        assert await wait_for_status(gw, key, 403)
        policy_file.write_text("permit(principal, action, resource) when { nonsense };")
        gw.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(5)  # respawn happens; the worker must keep serving the last good set
        assert (await infer(gw, key))[0] == 403
        assert "serving the last good set instead" in gw.log.read_text()
    finally:
        policy_file.write_text(POLICY_V1)
        gw.proc.send_signal(signal.SIGHUP)
        assert await wait_for_status(gw, key, 200)


async def wait_for_status(gw: Gateway, key: str, want: int, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (await infer(gw, key))[0] == want:
                return True
        except aiohttp.ClientError:
            pass  # the worker is being respawned
        await asyncio.sleep(0.2)
    return False


def test_invalid_policy_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s" * 48)
    (tmp_path / "bad.cedar").write_text('// ok\n@id("fine") permit(principal, action, '
                                        'resource);\n\n@id("bad")\nforbid(principal, action, '
                                        'resource) when { resource.sensitivty > 1 };\n')
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text("secret_file: secret\nstores: {keys: 'memory://'}\n"
                   "policy: {files: [bad.cedar]}\n")
    result = cli("serve", "--config", str(cfg), check=False)
    assert result.returncode == 2
    assert f"{tmp_path / 'bad.cedar'}:4: policy 'bad': " in result.stderr
    assert "sensitivty" in result.stderr and "Traceback" not in result.stderr


def test_policy_check_cli(gw: Gateway) -> None:
    allowed = cli("policy", "check", "--config", str(gw.config), "--principal", "bob",
                  "--grant", "public", "--model", "public")
    assert "ALLOW" in allowed.stdout and "own-grants" in allowed.stdout
    assert "main.cedar:2" in allowed.stdout
    denied = cli("policy", "check", "--config", str(gw.config), "--principal", "bob",
                 "--grant", "secret", "--model", "secret", "--attr", "clearance=1", check=False)
    assert denied.returncode == 1
    assert "DENY" in denied.stdout and "forbidden by clearance" in denied.stdout
    net = cli("policy", "check", "--config", str(gw.config), "--principal", "bob",
              "--grant", "public", "--model", "public", "--attr", "networks=10.0.0.0/8",
              "--context", "source=10.2.3.4", check=False)
    assert net.returncode == 0, net.stdout + net.stderr
    bad = cli("policy", "check", "--config", str(gw.config), "--principal", "bob",
              "--model", "public", "--context", "colour=red", check=False)
    assert bad.returncode == 2 and "unknown fact" in bad.stderr
