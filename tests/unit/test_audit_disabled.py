"""`audit.sink: none://` records nothing: it starts only when acknowledged, and says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from modelfence.config import settings_from_mapping
from modelfence.errors import ConfigurationError
from modelfence.gateway.app import build_app


def config(model: Path, **audit: object) -> dict[str, object]:
    keys = model.parent / "audit-disabled-keys.db"  # never a file in the working directory
    return {"audit": {"sink": "none://", **audit}, "stores": {"keys": f"sqlite:///{keys}"},
            "models": [{"name": "digits", "backend": {"type": "skops", "path": str(model)}}]}


def test_no_audit_trail_without_an_acknowledgement(digits_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match=r"audit\.disabled_acknowledged: true"):
        settings_from_mapping(config(digits_files["skops"]))


def test_an_acknowledged_none_sink_warns_at_start_and_in_readiness(
        digits_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    settings = settings_from_mapping(config(digits_files["skops"], disabled_acknowledged=True))
    app = build_app(settings)
    with TestClient(app) as client:
        assert "AUDIT TRAIL DISABLED" in caplog.text
        assert any(r.levelno == logging.WARNING and "AUDIT TRAIL DISABLED" in r.getMessage()
                   for r in caplog.records)
        details = TestClient(app.state.admin_app).get("/admin/ready")
        assert (details.status_code, details.json()) == (200, {"ready": True,
                                                               "audit": "disabled"})
        public = client.get("/v2/health/ready")  # still ready; nothing told to anonymous
        assert (public.status_code, public.json()) == (200, {"ready": True})
