"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest

from .openai_stub import OpenAiStub


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAiStub]:
    """An OpenAI-speaking upstream stub on loopback, one per test module."""
    s = OpenAiStub().start()
    yield s
    s.stop()


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
