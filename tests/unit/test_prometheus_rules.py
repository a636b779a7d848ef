"""The shipped alerting rules (deploy/prometheus) pass `promtool check rules` and their unit
tests (`promtool test rules`): each alert fires on the series it is for, with its labels
and annotations, and stays quiet where it should."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..support import skip_or_fail

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool"
                                         if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        skip_or_fail("promtool is not installed (Debian package prometheus)")
    return found


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", "modelfence-rules.yml"], cwd=RULES,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "modelfence-rules.test.yml"], cwd=RULES,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout + test.stderr


def test_every_alert_is_tested() -> None:
    import yaml

    rules = yaml.safe_load((RULES / "modelfence-rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((RULES / "modelfence-rules.test.yml").read_text())
    fired = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])
             if a.get("exp_alerts")}
    assert alerts - fired == set(), "alerts no test sees firing"
