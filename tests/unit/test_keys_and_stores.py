"""API keys over every key store, PostgreSQL included (real server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelfence.errors import BadRequest, ConfigurationError, StoreError, Unauthenticated
from modelfence.identity.apikeys import ApiKeys, expiry_from, public_view
from modelfence.stores import KeyStore, key_store_from_url

SECRET = b"k" * 40


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/keys.db"
    else:
        url = "memory://"
    s = key_store_from_url(url)
    await s.open()
    yield s
    await s.close()


async def test_create_authenticate_revoke(store: KeyStore) -> None:
    keys = ApiKeys(store, SECRET, cache_ttl_s=0)
    new = await keys.create(principal="alice", tenant="acme", groups=["g1"], models=["m"])
    assert new.token not in repr(new.record)
    assert new.record.digest != new.token and len(new.record.digest) == 64
    p = await keys.authenticate(new.token)
    assert (p.id, p.tenant, p.groups, p.models, p.key_id) == (
        "alice", "acme", ("g1",), ("m",), new.record.key_id)
    assert p.may_use("m") and not p.may_use("other")
    assert new.record.key_id in [r.key_id for r in await keys.records()]
    assert await keys.revoke(new.record.key_id)
    assert await keys.revoke(new.record.key_id)  # idempotent
    with pytest.raises(Unauthenticated) as info:
        await keys.authenticate(new.token)
    assert info.value.reason == "revoked_key"
    assert not await keys.revoke("f" * 16)


async def test_expired_key_is_refused(store: KeyStore) -> None:
    keys = ApiKeys(store, SECRET, cache_ttl_s=0)
    new = await keys.create(principal="bob", tenant="acme", models=["m"],
                            expires_at=datetime.now(UTC) + timedelta(milliseconds=300))
    await keys.authenticate(new.token)
    await asyncio.sleep(0.4)
    with pytest.raises(Unauthenticated) as info:
        await keys.authenticate(new.token)
    assert info.value.reason == "expired_key"
    assert public_view(await store.get(new.record.key_id))["status"] == "expired"  # type: ignore[arg-type]


async def test_a_different_server_secret_cannot_use_the_store(store: KeyStore) -> None:
    new = await ApiKeys(store, SECRET).create(principal="c", tenant="t", models=["m"])
    with pytest.raises(Unauthenticated):
        await ApiKeys(store, b"z" * 40).authenticate(new.token)


@pytest.mark.parametrize("token", ["", "mf_", "mf_zzzzzzzzzzzzzzzz_" + "A" * 43,
                                   "mf_0123456789abcdef_short", "sk-" + "A" * 48])
async def test_malformed_tokens(token: str) -> None:
    keys = ApiKeys(key_store_from_url("memory://"), SECRET)
    with pytest.raises(Unauthenticated) as info:
        await keys.authenticate(token)
    assert info.value.message == "missing or invalid credentials"


async def test_cache_serves_within_ttl_and_local_revoke_is_immediate() -> None:
    store = key_store_from_url("memory://")
    keys = ApiKeys(store, SECRET, cache_ttl_s=60)
    other_replica = ApiKeys(store, SECRET, cache_ttl_s=60)
    new = await keys.create(principal="d", tenant="t", models=["m"])
    await other_replica.authenticate(new.token)
    await keys.revoke(new.record.key_id)
    with pytest.raises(Unauthenticated):
        await keys.authenticate(new.token)
    # another replica sees it after its cache period; with a 60 s TTL it still answers
    await other_replica.authenticate(new.token)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"principal": "has space", "tenant": "t"}, "principal"),
    ({"principal": "p", "tenant": ""}, "tenant"),
    ({"principal": "p", "tenant": "t", "models": ["a/b"]}, "models"),
    ({"principal": "p", "tenant": "t",
      "expires_at": datetime(2000, 1, 1, tzinfo=UTC)}, "expires_at"),
])
async def test_create_validates(kw: dict[str, object], msg: str) -> None:
    keys = ApiKeys(key_store_from_url("memory://"), SECRET)
    with pytest.raises(BadRequest, match=msg):
        await keys.create(**kw)  # type: ignore[arg-type]


def test_expiry_parsing() -> None:
    assert expiry_from(None, None) is None
    soon = expiry_from("90m", None)
    assert soon is not None and timedelta(minutes=89) < soon - datetime.now(UTC) < timedelta(
        minutes=91)
    for bad in ("5 days", "1y", "-1d", ""):
        if bad:
            with pytest.raises(BadRequest):
                expiry_from(bad, None)


def test_unknown_store_scheme_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown store scheme 'mysql'"):
        key_store_from_url("mysql://u:hunter2@db/x")
    with pytest.raises(ConfigurationError) as info:
        key_store_from_url("mongodb://u:hunter2@db/x")
    assert "hunter2" not in str(info.value)


async def test_unreachable_postgres_fails_closed_with_store_error() -> None:
    store = key_store_from_url("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(StoreError, match="unreachable"):
        await store.open()
    with pytest.raises(StoreError):
        await store.get("0" * 16)
