"""Fail closed: when the key store cannot answer, requests are denied, counted and logged."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from modelfence.config import settings_from_mapping
from modelfence.errors import StoreError
from modelfence.gateway.app import build_app, build_gateway
from modelfence.stores.keys import KeyRecord, MemoryKeyStore


class FlakyStore(MemoryKeyStore):
    """A store that goes down on demand, as a database does."""

    down = False

    async def get(self, key_id: str) -> KeyRecord | None:
        if self.down:
            raise StoreError("postgresql key store: OperationalError")
        return await super().get(key_id)

    async def revoke(self, key_id: str, at: datetime) -> bool:
        if self.down:
            raise StoreError("postgresql key store: OperationalError")
        return await super().revoke(key_id, at)


def test_store_outage_denies_with_503_and_recovers(
        tmp_path: Path, digits_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", "admin-" + "t" * 30)
    settings = settings_from_mapping({
        "server": {"admin_listen": None},
        "key_cache_ttl_s": 0,
        "audit": {"sink": "none://", "disabled_acknowledged": True},
        "models": [{"name": "digits",
                    "backend": {"type": "skops", "path": str(digits_files["skops"])}}]})
    store = FlakyStore()
    gw = build_gateway(settings, key_store=store)
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": [0.0] * 64}]}
    app = build_app(settings, gateway=gw)
    with TestClient(app) as client:
        admin = {"Authorization": "Bearer admin-" + "t" * 30}
        admin_api = TestClient(app.state.admin_app)  # its own listener is off here
        admin_api.portal = client.portal  # on the app's event loop
        key = admin_api.post("/admin/keys", json={"principal": "p", "tenant": "t",
                                               "models": ["digits"]}, headers=admin).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        assert client.post("/v2/models/digits/infer", json=body, headers=auth).status_code == 200

        store.down = True
        denied = client.post("/v2/models/digits/infer", json=body, headers=auth)
        assert denied.status_code == 503
        assert denied.json() == {"error": "the key store is unavailable; request denied"}
        assert client.get("/v2/health/ready").status_code == 503
        revoke = admin_api.delete(f"/admin/keys/{key.split('_')[1]}", headers=admin)
        assert revoke.status_code == 503
        metrics = admin_api.get("/metrics").text
        assert 'modelfence_store_errors_total{store="keys"} 1.0' in metrics
        assert "store failure in infer, request denied" in caplog.text

        store.down = False  # reconnects by itself, no restart
        assert client.post("/v2/models/digits/infer", json=body, headers=auth).status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
