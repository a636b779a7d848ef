"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from .mlserver_fixture import MLServer, running_mlserver
from .openai_stub import OpenAiStub


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAiStub]:
    """An OpenAI-speaking upstream stub on loopback, one per test module."""
    s = OpenAiStub().start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
             ) -> Iterator[MLServer]:
    """A real MLServer 1.7.1 serving the digits model, one per test process (it takes
    seconds to start), shared by the modules that only send it requests it answers. A
    module that crashes its handler on purpose overrides `mlserver` with `own_mlserver`."""
    with running_mlserver(tmp_path_factory.mktemp("mlserver"),
                          {"digits": digits_files["joblib"]}) as server:
        yield server


@pytest.fixture(scope="module")
def own_mlserver(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
                 ) -> Iterator[MLServer]:
    """An MLServer like `mlserver`, for one module alone: for modules that crash it."""
    with running_mlserver(tmp_path_factory.mktemp("mlserver"),
                          {"digits": digits_files["joblib"]}) as server:
        yield server


@pytest.fixture
def pg_audit_url(pg_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose tables live in a schema of their own (search_path through libpq's
    `options`), so an audit chain starts empty; dropped afterwards."""
    schema = f"mf_audit_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg_url else "?"
    yield f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
