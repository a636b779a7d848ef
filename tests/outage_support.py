"""PostgreSQL outages for tests and benches: a database of their own, reached through a
loopback proxy (tcp_proxy.TcpProxy) that they cut and restore, and client threads that
keep sending while they do.

    with scratch_database(pg_url, "modelfence_outage") as direct:
        with proxied_postgres(direct) as (proxy, url):
            ...  # the gateway gets `url`; proxy.cut(), proxy.restore()
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import psycopg

from .tcp_proxy import TcpProxy


@contextmanager
def scratch_database(pg_url: str, prefix: str) -> Iterator[str]:
    """A database of its own (`prefix`_ and 8 hex digits) on `pg_url`'s server: its URL.
    Dropped afterwards, connections or not."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_via(url: str, proxy: TcpProxy) -> str:
    """`url` through `proxy`: the same user (postgres if none), no password, the same
    database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(
        netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"))


@contextmanager
def proxied_postgres(url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of `url`'s PostgreSQL server, and `url` through it."""
    parts = urlsplit(url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy, postgres_via(url, proxy)


class ClientThreads:
    """One thread per key, each calling `send(key)` in a loop from the start of the `with`
    block to its end; leaving the block waits `join_s` at most for each thread."""

    join_s = 20.0

    def __init__(self, keys: list[str]) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(k,), daemon=True)
                         for k in keys]

    def send(self, key: str) -> None:
        raise NotImplementedError

    def _loop(self, key: str) -> None:
        while not self._stop.is_set():
            self.send(key)

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.join_s)
