"""docs/metrics.md lists exactly the metrics the daemon registers and the fields its alerts
carry; promtool finds the exposition clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sysdream.daemon import config
from sysdream.daemon.alerting import fields, kinds
from sysdream.daemon.detect.view import ModelView
from sysdream.daemon.service.loop import Service

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


@pytest.fixture
def exposition(tiny_detector):
    from prometheus_client import generate_latest

    svc = Service(config.load(None))
    svc.metrics = svc.new_metrics()
    svc.slot.use(ModelView(tiny_detector))
    svc.metrics.observe("scores", [0.1, 5.0], 0)
    try:
        yield generate_latest(svc.metrics.registry).decode()
    finally:
        svc.scorer.stop()


def documented(section: str) -> set[str]:
    """The metric names of one `## section` of docs/metrics.md."""
    text = DOC.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m if not m.endswith("_total") else m[:-6] for m in
            re.findall(r"^\| `((?:sysdream|process)_[a-z_]+)` \|", text, re.M)}


def registered(exposition: str) -> set[str]:
    return {m if not m.endswith("_total") else m[:-6]
            for m in re.findall(r"^# TYPE (\S+) ", exposition, re.M)}


def test_every_registered_metric_is_documented_and_nothing_else(exposition):
    assert registered(exposition) == documented("Metrics")


def test_promtool_finds_the_exposition_clean(exposition):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make setup` installs the prometheus package")
    out = subprocess.run([promtool, "check", "metrics"], input=exposition, text=True,
                         capture_output=True)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), \
        out.stdout + out.stderr


def test_every_alert_field_is_documented():
    text = DOC.read_text()
    documented = re.findall(r"^\| `SYSDREAM_([A-Z0-9_]+)` \|", text, re.M)
    assert [f.upper() for f in fields.ALERT_FIELDS] == documented
    for kind, mid in kinds.MESSAGE_IDS.items():
        assert f"| `{kind}` | `{mid}` |" in text
