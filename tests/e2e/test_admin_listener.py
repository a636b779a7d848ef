"""The admin API and metrics on a listener of their own, with scoped, audited, throttled
admin credentials; the public listener tells an anonymous caller nothing about models."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg
import pytest

from ..jwks_server import AUDIENCE, ISSUER, Issuer, JwksServer
from ..support import Gateway, cli, digits_rows, free_port, infer_body
from ..tcp_proxy import TcpProxy

BODY = json.dumps(infer_body(digits_rows(1))).encode()


def skops_model(digits_files: dict[str, Path], name: str = "digits") -> dict[str, Any]:
    return {"name": name, "backend": {"type": "skops", "path": str(digits_files["skops"])}}


async def call(url: str, method: str = "GET", token: str | None = None, body: Any = None,
               connector: aiohttp.BaseConnector | None = None
               ) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = json.dumps(body).encode() if body is not None else None
    async with aiohttp.ClientSession(connector=connector) as s, s.request(
            method, url, data=data, headers=headers) as r:
        text = await r.text()
        try:
            doc: Any = json.loads(text)
        except ValueError:
            doc = text
        return r.status, doc, dict(r.headers)


async def admin_records(gw: Gateway, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [r for r in gw.audit_records() if r["action"].startswith("admin:")]
        if len(records) >= count:
            return records
        await asyncio.sleep(0.1)
    return [r for r in gw.audit_records() if r["action"].startswith("admin:")]


async def both_workers_up(gw: Gateway) -> None:
    deadline = time.monotonic() + 30
    while (gw.log.read_text().count("admin API and metrics on") < 2
           and time.monotonic() < deadline):
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
            ) -> Iterator[Gateway]:
    """digits served, and `hidden-model` on an upstream that is not there (not ready)."""
    models = [skops_model(digits_files),
              {"name": "hidden-model", "backend": {
                  "type": "oip", "url": f"http://127.0.0.1:{free_port()}",
                  "connect_timeout_s": 0.2, "timeout_s": 0.5},
               "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]}}]
    gw = Gateway(tmp_path_factory.mktemp("gw-admin-listener"), models).start()
    yield gw
    gw.stop()


async def test_public_listener_serves_no_admin_api_and_no_metrics(gateway: Gateway) -> None:
    for method, path in (("GET", "/metrics"), ("GET", "/admin/keys"), ("POST", "/admin/keys"),
                         ("GET", "/admin/ready"), ("GET", "/admin/policy")):
        status, doc, _ = await call(f"{gateway.url}{path}", method, gateway.admin_token,
                                    {"principal": "x", "tenant": "y"})
        assert (status, doc) == (404, {"error": "not found"}), (method, path)
    status, doc, _ = await call(f"{gateway.admin_url}/admin/keys", token=gateway.admin_token)
    assert status == 200 and "keys" in doc
    status, text, _ = await call(f"{gateway.admin_url}/metrics")
    assert status == 200 and "modelfence_requests_total" in text
    # the public port carries no admin and no metrics text at all
    status, doc, _ = await call(f"{gateway.url}/v2/health/live")
    assert status == 200


async def test_public_readiness_names_no_model(gateway: Gateway) -> None:
    # ready while digits serves (readiness.models: any); only the admin names the other
    status, doc, _ = await call(f"{gateway.url}/v2/health/ready")
    assert (status, doc) == (200, {"ready": True})
    status, doc, _ = await call(f"{gateway.admin_url}/admin/ready")
    assert status == 200 and doc["not_ready"] == ["model hidden-model"]
    # the worker logs it as it answers: on a loaded machine the line may land a moment later
    deadline = time.monotonic() + 10
    while "not ready: model hidden-model" not in gateway.log.read_text():
        assert time.monotonic() < deadline, gateway.log.read_text()
        await asyncio.sleep(0.1)
    # and no model name in anything the public port answers without a credential
    for path in ("/v2/health/ready", "/v2/health/live", "/v2", "/metrics",
                 "/v2/models/hidden-model", "/v2/models/digits"):
        _, doc, _ = await call(f"{gateway.url}{path}")
        assert "hidden-model" not in json.dumps(doc) and "digits" not in json.dumps(doc), path


async def test_failed_admin_logins_are_named_throttled_and_audited(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    gw = Gateway(tmp_path / "gw", [skops_model(digits_files)],
                 extra={"admin": {"token_file": "admin-token", "failed_logins": "3/minute"}})
    gw.start()
    try:
        wrong = "wrong-" + secrets.token_urlsafe(16)
        for _ in range(3):
            status, doc, _ = await call(f"{gw.admin_url}/admin/keys", token=wrong)
            assert status == 401, doc
        status, doc, headers = await call(f"{gw.admin_url}/admin/keys", token=wrong)
        assert status == 429 and int(headers["Retry-After"]) >= 1, doc
        # the address is throttled, whatever it presents next
        status, _, _ = await call(f"{gw.admin_url}/admin/keys", token=gw.admin_token)
        assert status == 429
        records = await admin_records(gw, 5)
        assert [(r["principal"], r["status"], r["source"]) for r in records] == (
            [("admin:unknown", 401, "127.0.0.1")] * 3 + [("admin:unknown", 429, "127.0.0.1")] * 2)
        for text in (gw.audit_text(), gw.log.read_text()):
            assert wrong not in text and gw.admin_token not in text
        assert "failed admin login from 127.0.0.1 as admin:unknown" in gw.log.read_text()
    finally:
        gw.stop()


async def test_scoped_admin_token_covers_only_its_models_and_scopes(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    scorer = secrets.token_urlsafe(32)
    folder = tmp_path / "gw"
    folder.mkdir()
    (folder / "scorer-token").write_text(scorer)
    auditor = secrets.token_urlsafe(32)
    gw = Gateway(folder, [skops_model(digits_files), skops_model(digits_files, "other")],
                 extra={"admin": {"token_file": "admin-token", "tokens": [
                     {"name": "scorer", "token_file": "scorer-token",
                      "scopes": ["keys:read", "keys:write"], "models": ["digits"],
                      "tenants": ["t"]},
                     {"name": "auditor", "token_sha256": hashlib.sha256(
                         auditor.encode()).hexdigest(), "scopes": ["keys:read"]}]}})
    gw.start()
    try:
        keys = f"{gw.admin_url}/admin/keys"
        for models in (["other"], ["digits", "other"], ["*"], []):
            status, doc, _ = await call(keys, "POST", scorer,
                                        {"principal": "p", "tenant": "t", "models": models})
            assert status == 403 and "admin:token:scorer may mint keys only" in doc["error"], (
                models, doc)
        status, mine, _ = await call(keys, "POST", scorer,
                                     {"principal": "p", "tenant": "t", "models": ["digits"]})
        assert status == 201, mine
        status, other, _ = await call(keys, "POST", gw.admin_token,
                                      {"principal": "q", "tenant": "t", "models": ["other"]})
        assert status == 201, other
        status, listing, _ = await call(keys, token=scorer)
        assert [k["key_id"] for k in listing["keys"]] == [mine["key_id"]]
        # a key outside its models is one it cannot see, nor revoke
        status, _, _ = await call(f"{keys}/{other['key_id']}", "DELETE", scorer)
        assert status == 404
        status, doc, _ = await call(f"{gw.admin_url}/admin/policy/reload", "POST", scorer)
        assert status == 403 and "lacks the policy:write scope" in doc["error"]
        # read-only: lists every key, mints none
        status, listing, _ = await call(keys, token=auditor)
        assert {k["key_id"] for k in listing["keys"]} >= {mine["key_id"], other["key_id"]}
        status, _, _ = await call(keys, "POST", auditor, {"principal": "r", "tenant": "t"})
        assert status == 403
        async with aiohttp.ClientSession() as s, s.post(
                f"{gw.url}/v2/models/digits/infer", data=BODY,
                headers={"Authorization": f"Bearer {mine['key']}"}) as r:
            assert r.status == 200

        records = await admin_records(gw, 11)
        seen = {(r["principal"], r["action"], r["status"]) for r in records}
        assert ("admin:token:scorer", "admin:create-key", 201) in seen
        assert ("admin:token:scorer", "admin:create-key", 403) in seen
        assert ("admin:token:scorer", "admin:revoke-key", 404) in seen
        assert ("admin", "admin:create-key", 201) in seen
        assert ("admin:token:auditor", "admin:list-keys", 200) in seen
        for text in (gw.audit_text(), gw.log.read_text()):
            assert scorer not in text and auditor not in text
    finally:
        gw.stop()


async def test_a_scoped_admin_grants_only_its_tenants_groups_and_attributes(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    """A keys:write admin for one model cannot mint a key with more power than it holds: a
    group or an attribute policy grants on, or a principal of another tenant; and it sees
    and revokes only keys of its own tenants."""
    team, plain = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    gw = Gateway(tmp_path / "gw", [skops_model(digits_files)], extra={"admin": {
        "token_file": "admin-token", "tokens": [
            {"name": "team", "token_sha256": hashlib.sha256(team.encode()).hexdigest(),
             "scopes": ["keys:read", "keys:write"], "models": ["digits"],
             "tenants": ["acme"], "groups": ["batch"], "attributes": ["purpose"]},
            {"name": "plain", "token_sha256": hashlib.sha256(plain.encode()).hexdigest(),
             "scopes": ["keys:write"]}]}})
    gw.start()
    try:
        keys = f"{gw.admin_url}/admin/keys"
        base = {"principal": "p", "tenant": "acme", "models": ["digits"]}
        for extra, refused in (
                ({"groups": ["partners"]}, "groups partners (its groups: batch)"),
                ({"groups": ["batch", "partners", "admins"]}, "groups admins, partners"),
                ({"attributes": {"clearance": 3}}, "attributes clearance (its attributes: "
                                                   "purpose)"),
                ({"tenant": "globex"}, "tenant 'globex' (its tenants: acme)"),
                ({"tenant": "globex", "attributes": {"purpose": "x", "networks": ["0/0"]}},
                 "tenant 'globex' (its tenants: acme); attributes networks")):
            status, doc, _ = await call(keys, "POST", team, {**base, **extra})
            assert status == 403, (extra, doc)
            assert doc["error"].startswith(f"admin:token:team may not grant {refused}"), doc
        status, mine, _ = await call(keys, "POST", team, {
            **base, "groups": ["batch"], "attributes": {"purpose": "scoring"}})
        assert status == 201 and mine["groups"] == ["batch"], mine
        # a token of every model and tenant still grants no group or attribute unlisted
        status, doc, _ = await call(keys, "POST", plain, {**base, "groups": ["batch"]})
        assert (status, doc["error"]) == (
            403, "admin:token:plain may not grant groups batch (its groups: none)")
        # the full-power admin keeps everything
        status, theirs, _ = await call(keys, "POST", gw.admin_token, {
            **base, "tenant": "globex", "groups": ["partners"], "attributes": {"clearance": 3}})
        assert status == 201, theirs
        status, listing, _ = await call(keys, token=team)
        assert [k["key_id"] for k in listing["keys"]] == [mine["key_id"]]
        status, _, _ = await call(f"{keys}/{theirs['key_id']}", "DELETE", team)
        assert status == 404
        status, _, _ = await call(f"{keys}/{mine['key_id']}", "DELETE", team)
        assert status == 200
        records = await admin_records(gw, 12)
        refusals = [r for r in records if r["status"] == 403]
        assert [r["principal"] for r in refusals] == ["admin:token:team"] * 5 + [
            "admin:token:plain"]
        # each record says what was granted, asked for, or revoked, like the CLI's
        assert refusals[0]["details"]["requested"]["groups"] == ["partners"]
        created, revoked = (next(r for r in records if r["action"] == action and r["status"]
                                 < 400 and r["key_id"] == mine["key_id"])
                            for action in ("admin:create-key", "admin:revoke-key"))
        view = {k: v for k, v in mine.items() if k != "key"}
        assert created["details"] == view
        assert revoked["details"] == {**view, "status": "revoked",
                                      "revoked_at": revoked["details"]["revoked_at"]}
        assert revoked["details"]["revoked_at"]
        assert mine["key"].split("_", 2)[2] not in gw.audit_text()
    finally:
        gw.stop()


async def test_oidc_admins_are_the_admin_group(tmp_path: Path,
                                               digits_files: dict[str, Path]) -> None:
    idp = Issuer()
    idp.add("ec", "ec-1")
    with JwksServer(idp) as jwks:
        gw = Gateway(tmp_path / "gw", [skops_model(digits_files)], extra={
            "identity": {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE],
                                 "jwks_url": jwks.url, "tenant_claim": "tid",
                                 "groups_claim": "groups"}},
            "admin": {"oidc": {"group": "mf-admins", "scopes": ["keys:read", "keys:write"],
                               "models": ["digits"], "tenants": ["t"]}}})
        gw.start()
        try:
            keys = f"{gw.admin_url}/admin/keys"
            admin_jwt = idp.token("ec-1", sub="carol", groups=["staff", "mf-admins"])
            status, doc, _ = await call(keys, "POST", admin_jwt,
                                        {"principal": "p", "tenant": "t", "models": ["digits"]})
            assert status == 201, doc
            status, doc, _ = await call(keys, "POST", admin_jwt, {"principal": "p",
                                                                  "tenant": "t"})
            assert status == 403  # its models bound the keys it mints
            status, doc, _ = await call(keys, "POST", admin_jwt, {
                "principal": "p", "tenant": "t", "models": ["digits"], "groups": ["partners"]})
            assert status == 403 and "may not grant groups partners" in doc["error"], doc
            analyst = idp.token("ec-1", sub="dave", groups=["analysts"])
            status, doc, _ = await call(keys, token=analyst)
            assert status == 403 and "not in the admin group" in doc["error"]
            expired = idp.token("ec-1", sub="carol", groups=["mf-admins"],
                                exp=int(time.time()) - 3600)
            status, _, _ = await call(keys, token=expired)
            assert status == 401
            # the static admin token is not configured here: nothing else gets in
            status, _, _ = await call(keys, token=gw.admin_token)
            assert status == 401
            records = await admin_records(gw, 6)
            assert [(r["principal"], r["status"]) for r in records] == [
                ("admin:oidc:carol", 201), ("admin:oidc:carol", 403), ("admin:oidc:carol", 403),
                ("admin:oidc:dave", 403),
                ("admin:unknown", 401), ("admin:unknown", 401)]
            assert admin_jwt not in gw.audit_text() and admin_jwt not in gw.log.read_text()
        finally:
            gw.stop()


async def test_admin_listener_on_a_unix_socket_with_two_workers(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    sock = tmp_path / "run" / "admin.sock"
    gw = Gateway(tmp_path / "gw", [skops_model(digits_files)])
    gw.extra["server"] = {"host": "127.0.0.1", "port": gw.port, "workers": 2,
                          "admin_listen": f"unix:{sock}"}
    gw.start()
    try:
        await both_workers_up(gw)  # the socket is bound before the workers start
        for _ in range(6):
            status, doc, _ = await call("http://admin/admin/keys", token=gw.admin_token,
                                        connector=aiohttp.UnixConnector(path=str(sock)))
            assert status == 200 and "keys" in doc
        status, text, _ = await call("http://admin/metrics",
                                     connector=aiohttp.UnixConnector(path=str(sock)))
        assert status == 200 and "# TYPE modelfence_" in text
        assert gw.log.read_text().count("admin API and metrics on unix:") == 2  # both workers
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
        status, _, _ = await call(f"{gw.url}/metrics")
        assert status == 404
    finally:
        gw.stop()
    assert not sock.exists()


@contextlib.contextmanager
def audit_on_cuttable_postgres(pg_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A database of its own on `pg_url`'s server, reached through a proxy the test cuts:
    the proxy and the database's URL through it."""
    name = f"mf_admin_{secrets.token_hex(4)}"
    parts = urlsplit(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
            yield proxy, urlunsplit(parts._replace(
                netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}", path=f"/{name}"))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def key_statuses(gw: Gateway) -> dict[str, str]:
    listed = json.loads(cli("keys", "list", "--config", str(gw.config), "--json").stdout)
    return {k["key_id"]: k["status"] for k in listed["keys"]}


@pytest.mark.postgres
async def test_admin_actions_are_refused_while_the_audit_log_cannot_record_them(
        tmp_path: Path, digits_files: dict[str, Path], pg_url: str) -> None:
    """Fail closed: with the audit store away and no room to spill, an admin action is
    refused (503) before it is done, as a model call is; once the store is back it works."""
    with audit_on_cuttable_postgres(pg_url) as (proxy, audit_url):
        gw = Gateway(tmp_path / "gw", [skops_model(digits_files)],
                     extra={"audit": {"sink": audit_url, "spill_max_bytes": 0}})
        gw.start()
        try:
            keys = f"{gw.admin_url}/admin/keys"
            grant = {"principal": "p", "tenant": "t", "models": ["digits"]}
            status, kept, _ = await call(keys, "POST", gw.admin_token, grant)
            assert status == 201, kept
            proxy.cut()
            deadline = time.monotonic() + 30  # a call's record has nowhere to go: 503 after it
            status = 0
            while status != 503 and time.monotonic() < deadline:
                status, doc, _ = await call(f"{gw.url}/v2/models/digits/infer", "POST",
                                            kept["key"], infer_body(digits_rows(1)))
                await asyncio.sleep(0.1)
            assert status == 503, doc
            status, doc, _ = await call(keys, "POST", gw.admin_token, grant)
            assert status == 503 and "audit log cannot record" in doc["error"], doc
            status, doc, _ = await call(f"{keys}/{kept['key_id']}", "DELETE", gw.admin_token)
            assert status == 503, doc
            status, doc, _ = await call(f"{gw.admin_url}/admin/policy/reload", "POST",
                                        gw.admin_token)
            assert status == 503, doc
            assert key_statuses(gw) == {kept["key_id"]: "active"}  # nothing was done
            proxy.restore()
            deadline = time.monotonic() + 30
            while status != 201 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status, doc, _ = await call(keys, "POST", gw.admin_token, grant)
            assert status == 201, doc
        finally:
            gw.stop()
        assert "Traceback" not in gw.log.read_text()


async def test_a_key_whose_audit_record_cannot_be_written_is_revoked_unused(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    """No record, no key: the token is never handed out, and the key is revoked; a
    revocation whose record fails stands, and the answer says so; a read is not answered."""
    gw = Gateway(tmp_path / "gw", [skops_model(digits_files)],
                 extra={"audit": {"sink": "jsonl:////dev/full"}})  # every write fails
    gw.start()
    try:
        up = gw.folder / "up.yaml"  # the same keys, with an audit log that takes records
        up.write_text("secret_file: secret\nstores: {keys: 'sqlite:///keys.db'}\n"
                      "audit: {sink: 'jsonl:///up.jsonl'}\n")
        kept = json.loads(cli("keys", "create", "--config", str(up), "--principal", "q",
                              "--tenant", "t", "--model", "digits", "--json").stdout)
        keys = f"{gw.admin_url}/admin/keys"
        status, doc, _ = await call(keys, "POST", gw.admin_token,
                                    {"principal": "p", "tenant": "t", "models": ["digits"]})
        assert status == 503, doc
        assert "revoked unused" in doc["error"] and "mf_" not in json.dumps(doc), doc
        statuses = key_statuses(gw)
        assert statuses.pop(kept["key_id"]) == "active"
        assert list(statuses.values()) == ["revoked"]
        status, doc, _ = await call(f"{keys}/{kept['key_id']}", "DELETE", gw.admin_token)
        assert status == 503 and "took effect" in doc["error"], doc
        assert key_statuses(gw)[kept["key_id"]] == "revoked"
        status, doc, _ = await call(keys, token=gw.admin_token)
        assert status == 503 and "keys" not in doc, doc
    finally:
        gw.stop()
    assert "Traceback" not in gw.log.read_text()


def test_serve_refuses_a_short_admin_token_in_one_line(tmp_path: Path,
                                                       digits_files: dict[str, Path]) -> None:
    gw = Gateway(tmp_path / "gw", [skops_model(digits_files)], admin_token="changeme")
    gw.write_config()
    out = cli("serve", "--config", str(gw.config), check=False)
    assert out.returncode == 2, out
    assert "admin-token: the admin token needs 24 characters or more (it has 8)" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


async def test_serve_removes_only_a_stale_admin_socket(tmp_path: Path,
                                                      digits_files: dict[str, Path]) -> None:
    """A file that is not a socket, or the socket of a server that answers on it, stops the
    start and is left alone; a socket nobody answers on (a killed server's) is replaced."""
    import socket

    sock = tmp_path / "run" / "admin.sock"
    sock.parent.mkdir()

    def unix_gateway(name: str) -> Gateway:
        gw = Gateway(tmp_path / name, [skops_model(digits_files)])
        gw.extra["server"] = {"host": "127.0.0.1", "port": gw.port,
                              "admin_listen": f"unix:{sock}"}
        return gw

    sock.write_text("not a socket")
    refused = unix_gateway("file")
    try:
        with pytest.raises(RuntimeError, match=f"{sock} exists and is not a socket"):
            refused.start()
    finally:
        refused.stop()
    assert sock.read_text() == "not a socket"
    sock.unlink()

    stale = socket.socket(socket.AF_UNIX)  # bound, never listening: nobody answers
    stale.bind(str(sock))
    stale.close()
    first = unix_gateway("first").start()
    try:
        status, _, _ = await call("http://admin/admin/keys", token=first.admin_token,
                                  connector=aiohttp.UnixConnector(path=str(sock)))
        assert status == 200
        second = unix_gateway("second")
        try:
            with pytest.raises(RuntimeError, match=f"another server answers on {sock}"):
                second.start()
        finally:
            second.stop()
        status, _, _ = await call("http://admin/admin/keys", token=first.admin_token,
                                  connector=aiohttp.UnixConnector(path=str(sock)))
        assert status == 200  # the first server's socket is still there and its own
        assert "Traceback" not in second.log.read_text()
    finally:
        first.stop()
