"""`modelfence siem test`: a test finding to each destination, and which took it."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..rsyslog_daemon import Rsyslog, require_rsyslogd
from ..support import cli, free_port


def test_siem_test_says_which_destination_took_the_finding(tmp_path: Path) -> None:
    require_rsyslogd()
    daemon = Rsyslog(tmp_path / "rsyslog").start()
    (tmp_path / "token").write_text("hec-token-not-shown")
    (tmp_path / "secret").write_text("s" * 40)
    config = tmp_path / "modelfence.yaml"
    config.write_text(yaml.safe_dump({"secret_file": "secret", "siem": {
        "spool_dir": "spool", "destinations": [
            {"type": "syslog", "name": "rsyslog", "host": "127.0.0.1", "port": daemon.port},
            {"type": "hec", "name": "splunk", "token_file": "token",
             "url": f"http://127.0.0.1:{free_port()}/services/collector/event"}]}}))
    try:
        done = cli("siem", "test", "--config", str(config), "--timeout", "1", check=False)
        [line] = daemon.wait_lines(1)
    finally:
        daemon.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    cells = [r.replace("│", " ").split() for r in done.stdout.splitlines()]
    rows = {c[0]: " ".join(c[1:]) for c in cells if c[:1] in (["rsyslog"], ["splunk"])}
    assert "delivered" in rows["rsyslog"]
    assert "failed" in rows["splunk"] and "ClientConnectorError" in rows["splunk"]
    assert "hec-token-not-shown" not in done.stdout + done.stderr
    assert 'kind="test"' in line and "modelfence SIEM test finding" in line
    assert not (tmp_path / "spool").exists()  # the gateway's spools are not touched
