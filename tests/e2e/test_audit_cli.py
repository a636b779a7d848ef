"""A real gateway writes a chained, signed audit log; the `modelfence audit` CLI reads it.

Also checks what must never be in a record: keys, tokens, raw inputs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import aiohttp

from ..support import Gateway, cli

MARK = 0.7654321  # a distinctive input value: it must not reach the audit log


def body(value: float) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": [value] * 64}]}).encode()


async def post(gw: Gateway, model: str, token: str) -> int:
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v2/models/{model}/infer", data=body(MARK),
            headers={"Authorization": f"Bearer {token}",
                     "Content-Type": "application/json"}) as r:
        return r.status


async def test_gateway_log_verifies_reads_exports_and_catches_tampering(
        tmp_path: Path, digits_files: dict[str, Path]) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    made = cli("audit", "keygen", "--out", str(folder / "cp.pem")).stdout
    assert "created checkpoint key" in made and (folder / "cp.pub.pem").exists()
    gw = Gateway(folder, [{"name": "digits",
                           "backend": {"type": "skops", "path": str(digits_files["skops"])}}],
                 extra={"audit": {"sink": "sqlite:///audit.db", "durability": "strict",
                                  "checkpoint_key_file": "cp.pem", "checkpoint_every": 3}})
    gw.start()
    try:
        alice, bob = gw.key(principal="alice"), gw.key(principal="bob")
        statuses = [await post(gw, "digits", alice) for _ in range(3)]
        statuses += [await post(gw, "digits", bob) for _ in range(2)]
        statuses.append(await post(gw, "digits", alice[:-4] + "AAAA"))
        statuses.append(await post(gw, "no-such-model", alice))
    finally:
        gw.stop()  # a clean stop commits the queue and signs the head
    assert statuses[:5] == [200] * 5 and statuses[5] == 401
    config = str(gw.config)

    ok = cli("audit", "verify", "--config", config)
    assert ok.stdout.startswith("ok ") and "checkpoints verified" in ok.stdout
    report = json.loads(cli("audit", "verify", "--config", config, "--json").stdout)
    assert report["ok"] and report["records"] >= 7 and report["signatures_checked"]
    assert report["unsealed"] == 0
    auditor = cli("audit", "verify", "--store", f"sqlite:///{folder}/audit.db",
                  "--public-key", str(folder / "cp.pub.pem"))
    assert auditor.stdout.startswith("ok ")

    found = json.loads(cli("audit", "query", "--principal", "alice", "--config", config,
                           "--json").stdout)["records"]
    assert len(found) == 4
    assert {r["record"]["principal"] for r in found} == {"alice"}
    assert sorted(r["record"]["status"] for r in found) == [200, 200, 200, 404]
    bob_digits = json.loads(cli("audit", "query", "--principal", "bob", "--model", "digits",
                                "--since", "1h", "--config", config, "--json").stdout)
    assert len(bob_digits["records"]) == 2
    table = cli("audit", "query", "--principal", "bob", "--config", config,
                env={"COLUMNS": "160"}).stdout
    assert "bob" in table and "digits" in table
    tail = json.loads(cli("audit", "tail", "-n", "2", "--config", config, "--json").stdout)
    assert [r["seq"] for r in tail["records"]] == [report["records"] - 1, report["records"]]

    exported = folder / "export.jsonl"
    cli("audit", "export", "--format", "jsonl", "-o", str(exported), "--config", config)
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(lines) == report["records"]
    assert {"seq", "hash", "prev_hash", "record"} <= set(lines[0])
    assert lines[1]["prev_hash"] == lines[0]["hash"]

    # No key, token or raw input anywhere in the log or its export.
    db_text = (folder / "audit.db").read_bytes().decode("latin-1") + exported.read_text()
    for secret in (alice.split("_", 2)[2], bob.split("_", 2)[2], gw.admin_token, str(MARK)):
        assert secret not in db_text
    assert all(r["record"].get("inputs") is None for r in lines)

    with sqlite3.connect(folder / "audit.db") as db:  # hide one of alice's calls
        db.execute("UPDATE modelfence_audit SET principal = 'nobody' WHERE seq = ?",
                   (found[1]["seq"],))
    bad = cli("audit", "verify", "--config", config, check=False)
    assert bad.returncode == 1
    assert f"DAMAGED at record {found[1]['seq']}: modified" in bad.stdout


def test_cli_refuses_unchained_sinks_and_missing_logs(tmp_path: Path) -> None:
    config = tmp_path / "modelfence.yaml"
    config.write_text("audit: {sink: 'jsonl:///audit.jsonl'}\n")
    out = cli("audit", "verify", "--config", str(config), check=False)
    assert out.returncode == 2 and "not a chained store" in out.stderr
    out = cli("audit", "tail", "--store", f"sqlite:///{tmp_path}/nothing.db", check=False)
    assert out.returncode == 1 and "no audit log at" in out.stderr
    assert not (tmp_path / "nothing.db").exists()


def test_cli_key_changes_are_audited_in_the_chain(tmp_path: Path) -> None:
    """`keys create` and `keys revoke` leave chained records naming who did what, never the key.

    Who: the process's account, not LOGNAME/USER, which whoever runs the command sets."""
    import os
    import pwd

    spoof = {name: "mallory" for name in ("LOGNAME", "USER", "LNAME", "USERNAME")}
    (tmp_path / "secret").write_text("s" * 48)
    cli("audit", "keygen", "--out", str(tmp_path / "cp.pem"))
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text("secret_file: secret\nstores: {keys: 'sqlite:///keys.db'}\n"
                   "audit: {sink: 'sqlite:///audit.db', checkpoint_key_file: cp.pem}\n")
    created = json.loads(cli("keys", "create", "--config", str(cfg), "--principal", "alice",
                             "--tenant", "acme", "--model", "digits", "--json",
                             env=spoof).stdout)
    cli("keys", "revoke", created["key_id"], "--config", str(cfg), env=spoof)

    report = json.loads(cli("audit", "verify", "--config", str(cfg), "--json").stdout)
    assert report["ok"] and report["records"] == 2 and report["signatures_checked"]
    assert report["unsealed"] == 0  # each CLI change is signed, not left at the chain's head
    records = [r["record"] for r in json.loads(cli(
        "audit", "query", "--config", str(cfg), "--json").stdout)["records"]]
    assert [r["action"] for r in records] == ["admin:create-key", "admin:revoke-key"]
    for r in records:
        assert r["principal"] == f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"
        assert r["source"] == "cli"
        assert r["key_id"] == created["key_id"] and r["status"] == 200
        assert r["details"]["principal"] == "alice" and r["details"]["models"] == ["digits"]
    assert records[1]["details"]["status"] == "revoked"
    assert created["key"].split("_", 2)[2] not in (tmp_path / "audit.db").read_bytes().decode(
        "latin-1")


def test_cli_key_changes_when_the_audit_trail_is_down(tmp_path: Path) -> None:
    """No record, no key: creating refuses; revoking still revokes, and exits 1 saying so."""
    (tmp_path / "secret").write_text("s" * 48)
    (tmp_path / "down.db").mkdir()  # a folder where the audit file should be
    down, up = tmp_path / "down.yaml", tmp_path / "up.yaml"
    for cfg, sink in ((down, "down.db"), (up, "up.db")):
        cfg.write_text("secret_file: secret\nstores: {keys: 'sqlite:///keys.db'}\n"
                       f"audit: {{sink: 'sqlite:///{sink}'}}\n")
    args = ("--principal", "alice", "--tenant", "acme", "--model", "digits", "--json")
    out = cli("keys", "create", "--config", str(down), *args, check=False)
    assert out.returncode == 1 and "no key created: the audit log cannot record it" in out.stderr
    assert "mf_" not in out.stdout and "Traceback" not in out.stderr
    assert json.loads(cli("keys", "list", "--config", str(up), "--json").stdout)["keys"] == []

    key_id = json.loads(cli("keys", "create", "--config", str(up), *args).stdout)["key_id"]
    out = cli("keys", "revoke", key_id, "--config", str(down), check=False)
    assert out.returncode == 1 and f"{key_id} is revoked, but its audit record" in out.stderr
    keys = json.loads(cli("keys", "list", "--config", str(up), "--json").stdout)["keys"]
    assert [k["status"] for k in keys] == ["revoked"]


async def test_seal_prune_and_verify_with_the_cli(tmp_path: Path) -> None:
    """Retention through the CLI: seal, prune, verify the rest and the archive, catch tampering."""
    import gzip

    from modelfence.audit.checkpoint import load_signer

    from ..unit.test_audit_chain import write_log

    cli("audit", "keygen", "--out", str(tmp_path / "cp.pem"))
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text("audit: {sink: 'sqlite:///audit.db', checkpoint_key_file: cp.pem,\n"
                   "        retention: {archive_dir: archive, segment_records: 20}}\n")
    await write_log(tmp_path / "audit.db", 50, signer=load_signer(tmp_path / "cp.pem"))
    config = ("--config", str(cfg))

    sealed = json.loads(cli("audit", "seal", *config, "--json").stdout)
    assert sealed["segments"] == ["1-20", "21-40"] and sealed["records"] == 40  # whole ones
    sealed = json.loads(cli("audit", "seal", "--through", "50", *config, "--json").stdout)
    assert sealed["segments"] == ["41-50"]
    assert json.loads(cli("audit", "seal", *config, "--json").stdout)["segments"] == []
    refused = cli("audit", "prune", *config, check=False)
    assert refused.returncode == 2 and "--through SEQ and/or --older-than" in refused.stderr
    pruned = json.loads(cli("audit", "prune", "--through", "45", *config, "--json").stdout)
    assert pruned["segments"] == ["1-20", "21-40"] and pruned["rows_deleted"] == 40

    report = json.loads(cli("audit", "verify", *config, "--json").stdout)
    assert report["ok"] and report["first_seq"] == 41 and report["pruned_through"] == 40
    whole = json.loads(cli("audit", "verify", *config, "--archive", str(tmp_path / "archive"),
                           "--json").stdout)
    assert whole["ok"] and whole["first_seq"] == 1 and whole["last_seq"] == report["last_seq"]
    records = json.loads(cli("audit", "query", "--since", "1h", *config, "--json").stdout)
    actions = [r["record"]["action"] for r in records["records"]]
    assert actions == ["admin:seal-audit", "admin:seal-audit", "admin:prune-audit"]
    prune_record = records["records"][-1]["record"]
    assert prune_record["principal"].startswith("cli:")
    assert prune_record["details"]["first_seq"] == 1 and prune_record["details"]["last_seq"] == 40

    # a changed archive: --archive says so; the store alone still verifies from its anchor
    gz = tmp_path / "archive" / "audit-000000000001-000000000020.jsonl.gz"
    text = gzip.decompress(gz.read_bytes())
    gz.write_bytes(gzip.compress(text.replace(b'"status":200', b'"status":403', 1), mtime=0))
    bad = cli("audit", "verify", *config, "--archive", str(tmp_path / "archive"), check=False)
    assert bad.returncode == 1 and "DAMAGED at record 1: bad_archive" in bad.stdout
    assert cli("audit", "verify", *config).stdout.startswith("ok ")

    # the first live record after pruning, changed
    with sqlite3.connect(tmp_path / "audit.db") as db:
        db.execute("UPDATE modelfence_audit SET principal = 'nobody' WHERE seq = 41")
    bad = cli("audit", "verify", *config, check=False)
    assert bad.returncode == 1 and "DAMAGED at record 41: modified" in bad.stdout
