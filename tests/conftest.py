"""Shared fixtures: a trained demo model, gateways on loopback, a real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Gateway, skip_or_fail, train_digits

PG_URL = os.environ.get("MODELFENCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MODELFENCE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_digits(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits the test model was trained on (scaled to [0, 1]), with labels: a thief's pool."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("pool") / "digits.npz"
    np.savez(path, x=x / 16.0, y=y)
    return path


@pytest.fixture(scope="session")
def local_gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
                  ) -> Iterator[Gateway]:
    """One gateway serving the skops and ONNX digits models, shared by read-only tests."""
    models = [
        {"name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])},
         "limits": {"max_batch": 64}},
        {"name": "digits-onnx", "backend": {"type": "onnx", "path": str(digits_files["onnx"])},
         # the ONNX graph calls its input "X"; clients see the configured name
         "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]}},
    ]
    gw = Gateway(tmp_path_factory.mktemp("gw"), models).start()
    yield gw
    gw.stop()


def _postgres_reachable(url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{exc.__class__.__name__}: {str(exc).strip()[:200]}"
    return None


def require_service(name: str, url: str, problem: str | None) -> str:
    """The URL of a reachable service; else skip with the reason (fail when CI=true)."""
    if problem is not None:
        skip_or_fail(f"{name} at {url} is not reachable ({problem})")
    return url


@pytest.fixture(scope="session")
def pg_url() -> str:
    return require_service("PostgreSQL", PG_URL, _postgres_reachable(PG_URL))


def _redis_reachable(url: str) -> str | None:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"{exc.__class__.__name__}: {str(exc).strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    return require_service("Redis", REDIS_URL, _redis_reachable(REDIS_URL))
