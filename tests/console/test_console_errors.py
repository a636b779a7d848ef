"""The admin listener's own error answers under /console (an unknown page, a wrong method)
carry the console's security headers too: no caching, no sniffing, no framing."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from modelfence.config import settings_from_mapping
from modelfence.console.headers import SECURITY_HEADERS
from modelfence.gateway.app import build_app


@pytest.fixture
def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", "admin-" + "t" * 30)
    settings = settings_from_mapping({
        "server": {"admin_listen": None}, "console": {"enabled": True}}, base_dir=tmp_path)
    return TestClient(build_app(settings).state.admin_app, base_url="http://testserver")


def test_console_error_answers_carry_the_security_headers(admin: TestClient) -> None:
    for method, path, status in (("GET", "/console/no-such-page", 404),
                                 ("POST", "/console/models", 404),
                                 ("DELETE", "/console/", 404),
                                 ("GET", "/console/static/nope.js", 404)):
        r = admin.request(method, path)
        assert r.status_code == status, (path, r.status_code)
        for name, value in SECURITY_HEADERS.items():
            assert r.headers.get(name) == value, (path, name)
    assert "content-security-policy" not in admin.get("/admin/nothing").headers


def test_an_unhandled_console_error_carries_them_too(admin: TestClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("modelfence.console.kit.ConsoleKit.render", broken)
    crashing = TestClient(admin.app, raise_server_exceptions=False)
    r = crashing.get("/console/login")
    assert r.status_code == 500 and "a bug" not in r.text
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name
