"""Keys and audit log in one SQLite file, read by an outside process while the gateway writes.

`stores.keys` and `audit.sink` both `sqlite:///state.db` is the natural single-machine form
of the one-database PostgreSQL example. Every connection of the gateway must keep its
POSIX locks on the file: if one is dropped, the first outside reader that closes the file
takes it for the last user, checkpoints and deletes the WAL, and the gateway goes on
writing into a deleted file — nothing it writes is seen, and nothing survives a kill.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..support import Gateway, cli, digits_rows, infer_body

#: An outside reader: another process that opens state.db, reads, and closes it.
READER = """
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
audit = db.execute("SELECT count(*) FROM modelfence_audit").fetchone()[0]
revoked = [r[0] for r in db.execute(
    "SELECT key_id FROM modelfence_keys WHERE revoked_at IS NOT NULL")]
db.close()
print(json.dumps({"audit": audit, "revoked": revoked}))
"""


def outside_read(path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True,
                         text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout))


def call(url: str, method: str, path: str, token: str, body: bytes | None = None) -> int:
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        f"{url}{path}", data=body, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 (loopback only)
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_one_sqlite_file_for_keys_and_audit_with_an_outside_reader(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    gw = Gateway(tmp_path / "gw", [{"name": "digits", "backend": {
        "type": "skops", "path": str(digits_files["skops"])}}], extra={
        "stores": {"keys": "sqlite:///state.db"}, "audit": {"sink": "sqlite:///state.db"}})
    state = gw.folder / "state.db"
    gw.write_config()
    user, doomed = gw.key(), gw.key(principal="bob")
    doomed_id = doomed.split("_")[1]
    assert state.stat().st_mode & 0o077 == 0  # key digests and the audit log: owner only
    gw.start()
    try:
        body = json.dumps(infer_body(digits_rows(1))).encode()
        outside_read(state)  # an outside process opens and closes the file while we serve
        for _ in range(20):
            assert call(gw.url, "POST", "/v2/models/digits/infer", user, body) == 200
        assert call(gw.admin_url, "DELETE", f"/admin/keys/{doomed_id}", gw.admin_token) == 200
        assert call(gw.url, "POST", "/v2/models/digits/infer", doomed, body) == 401
        deadline = time.monotonic() + 10
        while (seen := outside_read(state))["audit"] < 22 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen["audit"] >= 22, seen  # 20 answers, the revocation, the refusal
        gw.kill()  # the server and its worker
        after_kill = outside_read(state)
        assert after_kill["audit"] >= seen["audit"] and doomed_id in after_kill["revoked"]

        gw.start()  # the revocation survived the kill: the key stays refused
        assert call(gw.url, "POST", "/v2/models/digits/infer", doomed, body) == 401
        assert call(gw.url, "POST", "/v2/models/digits/infer", user, body) == 200
    finally:
        gw.stop()
    report = json.loads(cli("audit", "verify", "--config", str(gw.config), "--json").stdout)
    assert report["ok"] and report["records"] >= seen["audit"] + 2, report
