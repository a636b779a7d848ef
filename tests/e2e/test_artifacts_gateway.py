"""Guarded loading and artifact downloads in the running gateway.

One gateway, four models: a signed file, the same file signed and then changed by one byte, an
encrypted file (AES-256-GCM, KEK in a keyring), and a malicious pickle with a scan required.
The signed and the encrypted model serve; the tampered one and the pickle are refused (ready
says which and why; requests get 503) without stopping the others, and the pickle's payload
never runs. Downloads are policy-checked and audited, and an unusual burst raises an alert.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from ..support import Gateway, cli, digits_rows, ec_key_pair, infer_body

POLICY = """
@id("own-grants")
permit (principal, action in [Action::"infer", Action::"metadata"], resource)
when { principal.models.contains(resource.name) };

@id("deployers-download")
permit (principal, action == Action::"artifact-download", resource)
when { principal.groups.contains("deployers") && principal.models.contains(resource.name) };
"""


class Payload:
    """Unpickling this runs a shell command: the scan must stop it first."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
            ) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("artifacts")
    ec_key_pair(folder / "sign.pem", folder / "sign.pub.pem")
    for name in ("signed", "tampered"):
        shutil.copy(digits_files["skops"], folder / f"{name}.skops")
        cli("artifact", "sign", str(folder / f"{name}.skops"), "--key", str(folder / "sign.pem"),
            "--signature", str(folder / f"{name}.skops.sig"))
    data = bytearray((folder / "tampered.skops").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "tampered.skops").write_bytes(bytes(data))
    cli("artifact", "keygen", "--keyring", str(folder / "kek.json"))
    cli("artifact", "encrypt", str(digits_files["skops"]), "--output",
        str(folder / "sealed.skops.enc"), "--keyring", str(folder / "kek.json"))
    with (folder / "evil.pkl").open("wb") as f:
        pickle.dump(Payload(folder / "PWNED"), f)
    (folder / "policy.cedar").write_text(POLICY)

    def signed(name: str) -> dict[str, object]:
        return {"name": name, "backend": {"type": "skops", "path": f"{name}.skops", "artifact": {
            "signature": {"public_key": "sign.pub.pem", "file": f"{name}.skops.sig"}}}}

    models = [signed("signed"), signed("tampered"),
              {"name": "sealed", "backend": {"type": "skops", "path": "sealed.skops.enc",
                                             "artifact": {"decrypt": {"keyring": "kek.json"}}}},
              {"name": "evil", "backend": {"type": "pickle", "path": "evil.pkl",
                                           "allow_unsafe_pickle": True,
                                           "artifact": {"scan": True}}}]
    gw = Gateway(folder, models, extra={"policy": {"files": ["policy.cedar"]},
                                        "audit": {"sink": "sqlite:///audit.db"}}).start()
    yield gw
    gw.stop()


def ask(gw: Gateway, key: str, model: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(f"{gw.url}/v2/models/{model}/infer",
                           json=infer_body(digits_rows(1)),
                           headers={"Authorization": f"Bearer {key}"})


def test_only_checked_models_serve(gateway: Gateway) -> None:
    key = gateway.key(principal="user")
    assert ask(gateway, key, "signed").status_code == 200
    assert ask(gateway, key, "sealed").status_code == 200  # decrypted in memory only
    for refused in ("tampered", "evil"):
        r = ask(gateway, key, refused)
        assert r.status_code == 503 and "not served" in r.json()["error"]
    public = httpx.get(f"{gateway.url}/v2/health/ready")  # names no model, no path
    assert (public.status_code, public.json()) == (200, {"ready": True})  # two models serve
    ready = httpx.get(f"{gateway.admin_url}/admin/ready")
    assert ready.status_code == 200
    text = ", ".join(ready.json()["not_ready"])
    assert "model tampered (refused" in text and "model evil (refused" in text
    assert "model signed" not in text and "model sealed" not in text
    log = gateway.log.read_text()
    assert "model tampered is not served" in log and "model evil is not served" in log
    assert not (gateway.folder / "PWNED").exists()  # the pickle never ran
    # no plaintext copy of the encrypted model appeared next to it
    assert not [p for p in gateway.folder.iterdir() if p.name.startswith("sealed")
                and p.name != "sealed.skops.enc"]


def test_downloads_are_policy_checked_audited_and_watched(gateway: Gateway) -> None:
    args = ["keys", "create", "--config", str(gateway.config), "--principal", "deployer",
            "--tenant", "ops", "--model", "signed", "--group", "deployers", "--json"]
    deployer = json.loads(cli(*args).stdout)["key"]
    outsider = gateway.key(principal="outsider", models=["signed"])
    url = f"{gateway.url}/v2/models/signed/artifact"
    with httpx.Client(timeout=10) as client:
        r = client.get(url, headers={"Authorization": f"Bearer {deployer}"})
        assert r.status_code == 200
        assert r.content == (gateway.folder / "signed.skops").read_bytes()
        denied = client.get(url, headers={"Authorization": f"Bearer {outsider}"})
        assert denied.status_code == 403
        assert client.get(url).status_code == 401
        for _ in range(4):  # a burst: more than 3 in a day with no history is unusual
            assert client.get(url, headers={"Authorization": f"Bearer {deployer}"}
                              ).status_code == 200
    rows = json.loads(cli("audit", "query", "--config", str(gateway.config), "--principal",
                          "deployer", "--limit", "100", "--json").stdout)["records"]
    actions = [r["record"]["action"] for r in rows]
    assert actions.count("artifact-download") == 5
    alerts = json.loads(cli("alerts", "--config", str(gateway.config), "--json").stdout)
    mine = [a["record"] for a in alerts["records"] if a["record"]["action"] == "alert:download"]
    assert mine and mine[0]["principal"] == "deployer" and "downloads in 24 h" in mine[0]["reason"]
