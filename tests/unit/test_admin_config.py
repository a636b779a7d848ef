"""Admin listener addresses and admin credentials: what the config accepts and refuses."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from modelfence.config import listen_address, settings_from_mapping
from modelfence.errors import ConfigurationError
from modelfence.gateway.admin_auth import AdminIdentity


@pytest.mark.parametrize(("text", "where"), [
    ("127.0.0.1:9090", ("127.0.0.1", 9090)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::1]:9090", ("::1", 9090)),
    ("unix:/run/modelfence/admin.sock", Path("/run/modelfence/admin.sock")),
])
def test_listen_addresses(text: str, where: Any) -> None:
    assert listen_address(text) == where


@pytest.mark.parametrize("text", ["9090", "localhost", ":9090", "host:0", "host:70000",
                                  "host:http", "unix:relative.sock"])
def test_bad_listen_addresses_name_the_key(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"server\.admin_listen"):
        settings_from_mapping({"server": {"admin_listen": text}})


def test_admin_listen_defaults_to_loopback_and_can_be_off() -> None:
    assert settings_from_mapping({}).server.admin_listen == "127.0.0.1:9090"
    assert settings_from_mapping({"server": {"admin_listen": None}}).server.admin_listen is None


@pytest.mark.parametrize(("admin", "message"), [
    ({"tokens": [{"name": "ops", "scopes": ["keys:read"]}]}, "exactly one of token_file"),
    ({"tokens": [{"name": "ops", "token_env": "X", "token_sha256": "a" * 64,
                  "scopes": ["keys:read"]}]}, "exactly one of token_file"),
    ({"tokens": [{"name": "ops", "token_env": "X", "scopes": []}]}, "scopes"),
    ({"tokens": [{"name": "ops", "token_env": "X", "scopes": ["keys:delete"]}]}, "scopes"),
    ({"tokens": [{"name": "ops", "token_sha256": "A" * 64, "scopes": ["keys:read"]}]},
     "token_sha256"),
    ({"tokens": [{"name": "ops", "token_env": "X", "scopes": ["keys:read"]},
                 {"name": "ops", "token_env": "Y", "scopes": ["keys:read"]}]}, "repeated: ops"),
    ({"oidc": {"group": "admins"}}, "admin.oidc needs identity.jwt"),
    ({"tokens": [{"name": "ops", "token_env": "X", "scopes": ["keys:write"],
                  "models": ["m1"]}]}, r"admin\.tokens\[0\]: .*must list the tenants"),
    ({"tokens": [{"name": "ops", "token_env": "X", "scopes": ["keys:write"],
                  "models": ["m1"], "tenants": []}]}, "tenants"),
    ({"failed_logins": "often"}, "failed_logins"),
])
def test_bad_admin_credentials_are_refused(admin: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings_from_mapping({"admin": admin})


def test_scoped_tokens_are_read_at_start_as_digests(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ops-token").write_text("o" * 32 + "\n")
    monkeypatch.setenv("AUDITOR_TOKEN", "a" * 32)
    s = settings_from_mapping({"admin": {"tokens": [
        {"name": "ops", "token_file": "ops-token", "scopes": ["keys:write"]},
        {"name": "auditor", "token_env": "AUDITOR_TOKEN", "scopes": ["keys:read"]},
        {"name": "ci", "token_sha256": "c" * 64, "scopes": ["keys:read"]}]}},
        base_dir=tmp_path)
    digests = {cred.name: sha for cred, sha in s.admin_token_sha256s()}
    assert digests == {"ops": hashlib.sha256(b"o" * 32).hexdigest(),
                       "auditor": hashlib.sha256(b"a" * 32).hexdigest(), "ci": "c" * 64}
    assert "o" * 32 not in repr(s) and "a" * 32 not in repr(s)


@pytest.mark.parametrize(("env", "message"), [
    ("", "environment variable SHORT is not set"),
    ("short", "24 characters or more"),
])
def test_a_missing_or_short_scoped_token_refuses_to_start(
        env: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHORT", env)
    s = settings_from_mapping({"admin": {"tokens": [
        {"name": "ops", "token_env": "SHORT", "scopes": ["keys:read"]}]}})
    with pytest.raises(ConfigurationError, match=message):
        s.admin_token_sha256s()


def test_a_scoped_admin_covers_only_its_models() -> None:
    scoped = AdminIdentity("admin:token:ops", frozenset({"keys:write"}), frozenset({"a", "b"}))
    assert scoped.covers_all(["a"]) and scoped.covers_all(["a", "b"])
    assert not scoped.covers_all([]) and not scoped.covers_all(["*"])
    assert not scoped.covers_all(["a", "c"]) and not scoped.covers(None)
    full = AdminIdentity("admin", frozenset({"keys:write"}), frozenset({"*"}))
    assert full.covers_all([]) and full.covers_all(["*"]) and full.covers("anything")


def test_oidc_admins_need_a_groups_claim() -> None:
    jwt = {"issuer": "https://idp.example/", "audiences": ["mf"], "tenant": "acme",
           "jwks_url": "http://127.0.0.1:1/jwks.json"}
    settings_from_mapping({"identity": {"jwt": jwt}, "admin": {"oidc": {"group": "g"}}})
    with pytest.raises(ConfigurationError, match="groups_claim"):
        settings_from_mapping({"identity": {"jwt": {**jwt, "groups_claim": None}},
                               "admin": {"oidc": {"group": "g"}}})


def test_scoped_admins_grant_no_groups_or_attributes_unless_listed() -> None:
    jwt = {"issuer": "https://idp.example/", "audiences": ["mf"], "tenant": "acme",
           "jwks_url": "http://127.0.0.1:1/jwks.json", "groups_claim": "groups"}
    s = settings_from_mapping({"identity": {"jwt": jwt}, "admin": {
        "oidc": {"group": "g"},
        "tokens": [{"name": "all", "token_env": "X", "scopes": ["keys:write"]},
                   {"name": "m1", "token_env": "Y", "scopes": ["keys:write"], "models": ["m1"],
                    "tenants": ["acme"], "groups": ["batch"], "attributes": ["*"]}]}})
    every, m1 = s.admin.tokens
    for grant in (every, s.admin.oidc):
        assert grant is not None
        assert (grant.allowed_tenants(), grant.groups, grant.attributes) == (["*"], [], [])
    assert (m1.allowed_tenants(), m1.groups, m1.attributes) == (["acme"], ["batch"], ["*"])


def test_a_scoped_admin_names_what_it_may_not_grant() -> None:
    scoped = AdminIdentity("admin:token:ops", frozenset({"keys:write"}), frozenset({"a"}),
                           tenants=frozenset({"acme"}), groups=frozenset({"batch"}),
                           attributes=frozenset())
    assert scoped.refusals("acme", ["batch"], []) == []
    assert scoped.refusals("globex", ["batch", "partners"], ["clearance"]) == [
        "tenant 'globex' (its tenants: acme)", "groups partners (its groups: batch)",
        "attributes clearance (its attributes: none)"]
    assert scoped.covers_key(["a"], "acme") and not scoped.covers_key(["a"], "globex")
    full = AdminIdentity("admin", frozenset({"keys:write"}), frozenset({"*"}))
    assert full.refusals("any", ["partners"], ["clearance"]) == []
    assert full.covers_key(["x"], "any")


def test_a_short_full_power_admin_token_refuses_to_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-power token needs 24+ characters, as scoped ones do, wherever it comes from."""
    (tmp_path / "admin-token").write_text("changeme\n")
    s = settings_from_mapping({"admin": {"token_file": "admin-token"}}, base_dir=tmp_path)
    monkeypatch.delenv("MODELFENCE_ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match=r"admin-token: the admin token needs 24 "
                                                 r"characters or more \(it has 8\)"):
        s.admin_token()
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", "t" * 23)
    with pytest.raises(ConfigurationError, match="MODELFENCE_ADMIN_TOKEN: the admin token "
                                                 "needs 24 characters or more"):
        s.admin_token()
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", "t" * 24)
    assert s.admin_token() == "t" * 24
    (tmp_path / "admin-token").write_text("a" * 24 + "\n")
    monkeypatch.delenv("MODELFENCE_ADMIN_TOKEN")
    assert s.admin_token() == "a" * 24
