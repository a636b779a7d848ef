"""Crash consistency: a real process appending under load is killed with SIGKILL.

Whatever it committed must verify, nothing half-written may break the chain, a new
writer must continue the same chain, and in `strict` mode every record whose write
returned must be there.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelfence.audit.checkpoint import generate_keypair, load_public_key
from modelfence.audit.store import Query, audit_store_from_url
from modelfence.audit.verify import Report, verify_store

#: A writer process: URL, durability, key file, how many records (0: until killed), tag,
#: file where each acknowledged request id is appended, and optionally a gate: the writer
#: creates GATE.TAG once open and starts when GATE exists (to start several at once).
WRITER = """
import asyncio, os, sys
from modelfence.audit.sinks import audit_sink_from_url
from modelfence.config import AuditSettings

url, durability, key, count, tag, acks = sys.argv[1:7]
gate = sys.argv[7] if len(sys.argv) > 7 else None
count = int(count)

class Rec:
    def __init__(self, i):
        self.d = {"time": "2025-01-01T00:00:00+00:00", "request_id": f"{tag}-{i}",
                  "principal": tag, "tenant": "t", "model": "m", "action": "infer",
                  "status": 200, "pad": "x" * 300}
    def to_dict(self):
        return self.d

async def main():
    sink = audit_sink_from_url(url, AuditSettings(
        sink=url, durability=durability, checkpoint_key_file=key, checkpoint_every=50,
        batch_max=64, flush_interval_ms=2))
    await sink.open()
    out = open(acks, "a", buffering=1)
    if gate:
        open(f"{gate}.{tag}", "w").close()
        while not os.path.exists(gate):
            await asyncio.sleep(0.01)

    async def worker(w):
        i = w
        while count == 0 or i < count:
            await sink.write(Rec(i))
            if durability == "strict":
                out.write(f"{tag}-{i}\\n")
            i += 16

    await asyncio.gather(*(worker(w) for w in range(16)))
    await sink.close()

asyncio.run(main())
"""


def start_writer(url: str, durability: str, key: Path, count: int, tag: str, acks: Path,
                 gate: Path | None = None) -> subprocess.Popen[bytes]:
    args = [url, durability, str(key), str(count), tag, str(acks), *([str(gate)] if gate else [])]
    return subprocess.Popen([sys.executable, "-c", WRITER, *args], stderr=subprocess.PIPE)


async def verify(url: str, key: Path) -> tuple[Report, set[str]]:
    store = audit_store_from_url(url, create=False)
    await store.open()
    try:
        report = await verify_store(store, public_key=load_public_key(key))
        ids = {r.request_id or "" async for page in store.scan(Query()) for r in page}
        return report, ids
    finally:
        await store.close()


def rows_written(url: str) -> int:
    if url.startswith("sqlite:///"):
        try:
            with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5) as db:
                return int(db.execute("SELECT count(*) FROM modelfence_audit").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # not created yet
    import psycopg

    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM modelfence_audit").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0


@pytest.mark.parametrize("durability", ["batched", "strict"])
async def test_sigkill_mid_load_leaves_a_valid_chain(tmp_path: Path, durability: str) -> None:
    await crash_and_recover(f"sqlite:///{tmp_path}/audit.db", durability, tmp_path)


async def crash_and_recover(url: str, durability: str, tmp_path: Path) -> None:
    key, acks = tmp_path / "cp.pem", tmp_path / "acks.txt"
    generate_keypair(key, tmp_path / "cp.pub.pem")
    proc = start_writer(url, durability, key, 0, "crash", acks)
    deadline = time.monotonic() + 30
    while rows_written(url) < 1500:
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "writer too slow"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()  # type: ignore[union-attr]

    report, ids = await verify(url, key)
    assert report.ok, report.damage
    assert report.records >= 1500 and report.checkpoints >= 1
    if durability == "strict":
        acked = set(acks.read_text().split())
        assert acked and acked <= ids  # an answered write is never lost

    after = start_writer(url, durability, key, 100, "after", acks)  # the chain continues
    assert after.wait(timeout=60) == 0, after.stderr.read().decode()  # type: ignore[union-attr]
    after.stderr.close()  # type: ignore[union-attr]
    again, ids = await verify(url, key)
    assert again.ok, again.damage
    assert again.records == report.records + 100
    assert again.last_checkpoint == again.last_seq  # a clean close signs the head
