"""The shipped alerting rules (deploy/prometheus/alerts.yml): Prometheus' own promtool accepts them, and their
unit tests (alerts.test.yml: each rule just before and just after it fires) pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool(*argv: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    return subprocess.run([tool, *argv], cwd=RULES, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout


def test_each_rule_fires_when_and_as_documented():
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
