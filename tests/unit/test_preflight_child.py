"""`modelfence serve`'s start-up check runs in a forked child on Linux: the monitor's book it
restores (gigabytes with 100,000 callers) must not stay in the process that then hands over
to the workers; its errors are still one line from the parent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from modelfence.cli.main import app
from modelfence.monitor import Monitor, Summary

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the check forks on Linux")


def monitored_config(tmp_path: Path) -> Path:
    """A gateway with one monitored model and a saved monitor state of a few callers."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(300, 4))
    p = rng.dirichlet(np.ones(3), 300)
    Summary.fit(x, p).save(tmp_path / "m.summary.npz")
    monitor = Monitor(Summary.load(tmp_path / "m.summary.npz"))
    for i in range(5):
        monitor.observe(f"p{i}", x[i * 8:(i + 1) * 8], p[i * 8:(i + 1) * 8], now=1e9 + i)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "m.monitor-state").write_bytes(monitor.snapshot())
    (tmp_path / "secret").write_text("s" * 48)
    path = tmp_path / "modelfence.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"admin_listen": None}, "secret_file": "secret",
        "stores": {"keys": "sqlite:///keys.db"}, "audit": {"sink": "jsonl:///audit.jsonl"},
        "monitor": {"state_dir": "state"},
        "models": [{"name": "m", "backend": {"type": "oip", "url": "http://127.0.0.1:9"},
                    "input": {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                    "monitor": {"summary": "m.summary.npz"}}]}))
    return path


def test_the_check_restores_the_monitor_state_in_a_child_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = monitored_config(tmp_path)
    restored_here: list[int] = []
    where = tmp_path / "restored-by"
    real = Monitor.restore

    def restore(self: Monitor, data: bytes) -> None:
        restored_here.append(len(data))  # the child's copy of the list, when it is a child
        where.write_text(str(os.getpid()))
        real(self, data)

    monkeypatch.setattr(Monitor, "restore", restore)
    out = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert out.exit_code == 0, out.output
    assert where.exists(), "the check did not restore the state at all"
    assert int(where.read_text()) != os.getpid()  # restored, by another process...
    assert restored_here == []  # ...and nothing of it is held here


def test_a_failed_check_in_the_child_is_one_line_from_the_parent(tmp_path: Path) -> None:
    path = monitored_config(tmp_path)
    (tmp_path / "m.summary.npz").write_bytes(b"not a summary")
    out = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert out.exit_code == 2, out.output
    assert out.output.startswith("error: ") and out.output.count("\n") == 1, out.output
    assert "Traceback" not in out.output


def test_a_check_that_dies_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = monitored_config(tmp_path)

    def die(self: Monitor, data: bytes) -> None:
        os._exit(7)  # as an out-of-memory kill would end it: no answer

    monkeypatch.setattr(Monitor, "restore", die)
    out = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert out.exit_code == 2, out.output
    assert out.output == "error: the start-up check stopped with exit code 7\n"
