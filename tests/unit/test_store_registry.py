"""One registry from URL to store: every kind reads URLs the same way and refuses an unknown
scheme with one error naming the setting and the schemes it supports, never a password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelfence.audit.sinks import AUDIT_SINKS, JsonlSink, LogSink, NullSink
from modelfence.audit.store import AUDIT_STORES
from modelfence.errors import ConfigurationError
from modelfence.quota.budgets import BUDGET_STORES
from modelfence.redaction import hide_password, redact_url
from modelfence.stores import KEY_STORES, StoreKind
from modelfence.stores.registry import memory, postgresql, sqlite
from modelfence.watermark.store import EVIDENCE_STORES

KINDS = {
    "stores.keys": (KEY_STORES, "memory://, sqlite:///PATH or postgresql://USER@HOST/DB"),
    "quotas.budget_store": (BUDGET_STORES, "sqlite:///PATH or postgresql://USER@HOST/DB "
                            "(budgets must survive restarts)"),
    "watermark.evidence_store": (EVIDENCE_STORES, "sqlite:///PATH, postgresql://USER@HOST/DB "
                                 "or memory://"),
    "audit.sink": (AUDIT_SINKS, "sqlite:///PATH, postgresql://USER@HOST/DB, log://, "
                   "jsonl:///PATH or none://"),
}


@pytest.mark.parametrize("setting", list(KINDS))
def test_an_unknown_scheme_names_the_setting_and_the_schemes_without_the_password(
        setting: str) -> None:
    kind, supported = KINDS[setting]
    with pytest.raises(ConfigurationError) as info:
        kind.open("mysql://admin:hunter2@db.example/x?password=hunter3")
    message = str(info.value)
    assert message == (f"{setting}: unknown {kind.noun} scheme 'mysql' in "
                       f"mysql://db.example/x; use {supported}")
    assert "hunter" not in message and "admin" not in message


@pytest.mark.parametrize("kind", [KEY_STORES, BUDGET_STORES, EVIDENCE_STORES, AUDIT_STORES])
def test_sqlite_needs_a_path(kind: StoreKind[Any]) -> None:
    for url in ("sqlite://", "sqlite:///"):
        with pytest.raises(ConfigurationError, match=rf"^{kind.setting}: sqlite URL needs a "
                           "path"):
            kind.open(url)


def test_postgres_is_an_alias_of_postgresql() -> None:
    a = KEY_STORES.open("postgresql://u@127.0.0.1:1/x")
    b = KEY_STORES.open("postgres://u@127.0.0.1:1/x")
    assert type(a) is type(b) and type(a).__name__ == "PostgresKeyStore"
    assert set(AUDIT_STORES.schemes) == {"sqlite", "postgresql", "postgres"}


def test_audit_sinks_take_bare_names_and_files(tmp_path: Path) -> None:
    assert isinstance(AUDIT_SINKS.open("none"), NullSink)
    assert isinstance(AUDIT_SINKS.open("log://"), LogSink)
    assert isinstance(AUDIT_SINKS.open(f"jsonl:///{tmp_path}/a.jsonl"), JsonlSink)
    with pytest.raises(ConfigurationError, match="jsonl URL needs a path"):
        AUDIT_SINKS.open("jsonl:///")
    with pytest.raises(ConfigurationError, match="unknown store URL memory"):
        KEY_STORES.open("memory")  # a bare name only where a scheme allows it


def test_a_new_kind_is_declared_once_and_gets_options() -> None:
    built: list[tuple[Any, dict[str, Any]]] = []

    def on_disk(path: Path, **options: Any) -> str:
        built.append((path, options))
        return "disk"

    def on_server(url: str, **options: Any) -> str:
        built.append((url, options))
        return "server"

    kind = StoreKind("feature.store", sqlite(on_disk), postgresql(on_server),
                     memory(lambda: "memory"))
    assert kind.open("sqlite:///f.db", timeout_s=3) == "disk"
    assert kind.open("postgresql://db/f") == "server"
    assert kind.open("memory://", timeout_s=1) == "memory"
    assert built == [(Path("f.db"), {"timeout_s": 3}), ("postgresql://db/f", {})]
    with pytest.raises(ConfigurationError, match="^feature.store: unknown store scheme "
                       "'redis' in redis://h/0; use sqlite:///PATH, "
                       r"postgresql://USER@HOST/DB or memory://$"):
        kind.open("redis://h/0")


def test_one_redaction_helper() -> None:
    assert redact_url("https://user:tok@host:8443/v1?key=k#f") == "https://host:8443/v1"
    url = "postgresql://audit:s3cret@db/audit"
    assert hide_password("connection to db failed: password s3cret refused", url) == (
        "connection to db failed: password *** refused")
    assert hide_password("no password here", "postgresql://db/x") == "no password here"
