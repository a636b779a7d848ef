"""Strict durability: the answer leaves only after its audit record is committed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from modelfence.audit.record import AuditRecord
from modelfence.audit.sinks import AuditSink
from modelfence.audit.store import TABLE
from modelfence.config import settings_from_mapping
from modelfence.errors import StoreError
from modelfence.gateway.app import build_app, build_gateway
from modelfence.stores.keys import MemoryKeyStore

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
ADMIN = "admin-" + "t" * 30


def settings(tmp_path: Path, model: Path, **audit: object) -> object:
    return settings_from_mapping({
        "server": {"admin_listen": None},
        "audit": {"durability": "strict", **audit},
        "models": [{"name": "digits", "backend": {"type": "skops", "path": str(model)}}]},
        base_dir=tmp_path)


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", ADMIN)


def admin_of(client: TestClient) -> TestClient:
    """The admin listener's app, driven in-process on the app's own event loop (its port
    is off here)."""
    admin = TestClient(client.app.state.admin_app)  # type: ignore[attr-defined]
    admin.portal = client.portal
    return admin


def key_for(client: TestClient) -> dict[str, str]:
    key = admin_of(client).post(
        "/admin/keys", json={"principal": "p", "tenant": "t", "models": ["digits"]},
        headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
    return {"Authorization": f"Bearer {key}"}


def test_record_is_committed_before_the_answer(tmp_path: Path,
                                               digits_files: dict[str, Path]) -> None:
    s = settings(tmp_path, digits_files["skops"], sink="sqlite:///audit.db")
    gw = build_gateway(s, key_store=MemoryKeyStore())  # type: ignore[arg-type]
    with TestClient(build_app(s, gateway=gw)) as client:  # type: ignore[arg-type]
        auth = key_for(client)
        for expected in (1, 2, 3):
            answer = client.post("/v2/models/digits/infer", json=BODY, headers=auth)
            assert answer.status_code == 200
            with sqlite3.connect(tmp_path / "audit.db") as db:
                infers = db.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE action='infer'"  # noqa: S608
                                    ).fetchone()[0]
            assert infers == expected


class BrokenSink(AuditSink):
    """Takes admin records, fails on inference records."""

    async def write(self, record: AuditRecord) -> None:
        if record.action == "infer":
            raise StoreError("audit store down")


def test_a_record_that_cannot_be_committed_fails_the_request_closed(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    s = settings(tmp_path, digits_files["skops"], sink="none://", disabled_acknowledged=True)
    gw = build_gateway(s, key_store=MemoryKeyStore())  # type: ignore[arg-type]
    gw.audit_sink = BrokenSink()
    with TestClient(build_app(s, gateway=gw)) as client:  # type: ignore[arg-type]
        auth = key_for(client)
        answer = client.post("/v2/models/digits/infer", json=BODY, headers=auth)
        assert answer.status_code == 503
        assert answer.json() == {"error": "the audit store is unavailable; request denied"}
        assert 'modelfence_store_errors_total{store="audit"} 1.0' in admin_of(client).get(
            "/metrics").text
