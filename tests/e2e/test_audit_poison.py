"""Caller text cannot stop the PostgreSQL audit log (review finding 1).

The model name in an audit record is the raw URL path segment, so an anonymous caller
chooses it. A NUL (PostgreSQL text cannot hold it) or a name too long for the model
index used to make the batch holding it uncommittable: it was spilled and retried for
ever, every later record queued behind it, and the gateway ended up refusing everyone.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from modelfence.audit.spill import Spill
from modelfence.audit.store import Query, audit_store_from_url
from modelfence.audit.verify import verify_store
from modelfence.audit.writer import ChainedSink

from ..support import Gateway, cli, digits_rows, infer_body
from ..unit.test_audit_chain import Rec

pytestmark = pytest.mark.postgres

BODY = json.dumps(infer_body(digits_rows(1))).encode()


def post(gw: Gateway, model_path: str, key: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        f"{gw.url}/v2/models/{model_path}/infer", data=BODY, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 (loopback only)
            return int(r.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def models_recorded(url: str) -> list[str | None]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT model FROM modelfence_audit ORDER BY seq")]


def test_a_nul_or_huge_model_name_does_not_stop_the_audit_log(
        tmp_path: Path, digits_files: dict[str, Path], pg_audit_url: str) -> None:
    cli("audit", "keygen", "--out", str(tmp_path / "cp.pem"))
    gw = Gateway(tmp_path, [{"name": "digits", "backend": {
        "type": "skops", "path": str(digits_files["skops"])}}], extra={
        "audit": {"sink": pg_audit_url, "durability": "strict", "checkpoint_key_file": "cp.pem",
                  "spill_dir": "audit-spill"}})
    gw.start()
    try:
        key = gw.key(models=["digits"])
        huge = secrets.token_urlsafe(3000)  # about 4 KB: over the model index's row limit
        assert post(gw, "%00", None) == 401  # anonymous: the 401 is audited
        assert post(gw, huge, None) == 401
        assert post(gw, f"x%00{huge}", key) in (403, 404)
        for _ in range(3):
            assert post(gw, "digits", key) == 200  # later calls are served and recorded
        deadline = time.monotonic() + 20
        while models_recorded(pg_audit_url).count("digits") < 3:
            assert time.monotonic() < deadline, models_recorded(pg_audit_url)
            time.sleep(0.1)
    finally:
        gw.stop()
    models = models_recorded(pg_audit_url)
    assert models[-3:] == ["digits"] * 3
    assert all(m is None or ("\x00" not in m and len(m) <= 256) for m in models)
    assert any(m is not None and m.endswith("…(truncated)") for m in models)
    report = json.loads(cli("audit", "verify", "--config", str(gw.config), "--json").stdout)
    assert report["ok"] and report["records"] == len(models), report
    log = gw.log.read_text()
    assert "Traceback" not in log and "audit store cannot take records" not in log
    assert not list((tmp_path / "audit-spill").glob("spill-*.log"))


async def test_the_writer_sets_aside_what_postgresql_refuses(pg_audit_url: str,
                                                             tmp_path: Path) -> None:
    """Records straight to the writer (no record building to clean them): PostgreSQL's
    own refusals (a NUL: class 22; an index entry too large: class 54) are set aside."""
    poison = {3: "\x00", 5: secrets.token_hex(2500)}
    sink = ChainedSink(audit_store_from_url(pg_audit_url), batch_max=64, flush_interval_ms=50,
                       retry_s=0.05, spill=Spill(tmp_path / "spill", 1 << 20))
    await sink.open()
    for i in range(9):
        await sink.write(Rec(i, model=poison.get(i, "m")))  # type: ignore[arg-type]
    await sink.close()
    assert sink.dead_lettered == 2 and sink.lost == 0
    store = audit_store_from_url(pg_audit_url)
    await store.open()
    try:
        rows = await store.select(Query())
        assert [r.request_id for r in rows] == [f"req-{i}" for i in range(9) if i not in poison]
        assert (await verify_store(store)).ok
    finally:
        await store.close()
    lines = (tmp_path / "spill" / "audit-dead-letter.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == ["req-3", "req-5"]
