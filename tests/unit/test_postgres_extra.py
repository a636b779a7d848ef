"""PostgreSQL stores come with the `postgres` extra: a postgresql:// URL on an install without
it stops at start with one line naming the extra, for every kind of store, and nothing is
imported to find out."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from modelfence.audit.sinks import audit_sink_from_url
from modelfence.cli.main import app
from modelfence.errors import ConfigurationError
from modelfence.quota.budgets import BUDGET_STORES
from modelfence.stores import key_store_from_url
from modelfence.watermark.store import EVIDENCE_STORES

URL = "postgresql://modelfence@127.0.0.1:1/modelfence"


def _without_psycopg(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed


@pytest.mark.parametrize(("build", "what"), [
    (key_store_from_url, "postgresql key store"),
    (BUDGET_STORES.open, "postgresql budget store"),
    (EVIDENCE_STORES.open, "postgresql watermark evidence store"),
    (audit_sink_from_url, "postgresql audit store"),
])
def test_each_postgresql_store_names_the_extra_when_built(
        monkeypatch: pytest.MonkeyPatch, build: Callable[[str], Any], what: str) -> None:
    _without_psycopg(monkeypatch, "psycopg", "psycopg_pool")
    with pytest.raises(ConfigurationError) as err:
        build(URL)
    message = str(err.value)
    assert message.startswith(f"{what} needs"), message
    assert message.endswith("needs the 'postgres' extra (missing: psycopg, psycopg-pool): "
                            "pip install 'modelfence[postgres]'"), message
    assert "127.0.0.1" not in message


def test_with_the_extra_a_postgresql_store_is_built_without_connecting() -> None:
    store = key_store_from_url(URL)  # port 1: building must not connect
    assert type(store).__name__ == "PostgresKeyStore"


def test_serve_checks_the_extra_before_opening_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text("s" * 48)
    path = tmp_path / "modelfence.yaml"
    path.write_text(yaml.safe_dump({
        "secret_file": "secret", "stores": {"keys": URL},
        "audit": {"sink": "jsonl:///audit.jsonl"},
        "models": [{"name": "oip", "backend": {"type": "oip",
                                              "url": "http://127.0.0.1:1/v2/models/m"}}]}))
    _without_psycopg(monkeypatch, "psycopg_pool")
    out = CliRunner().invoke(app, ["serve", "--config", str(path), "--port", "1"])
    assert out.exit_code == 2, out.output
    assert out.output == ("error: postgresql key store needs the 'postgres' extra (missing: "
                          "psycopg-pool): pip install 'modelfence[postgres]'\n")
