"""Every Prometheus alert that ships (packaging/prometheus) carries a runbook_url to its
own section of docs/runbook.md, which says what it means and what to do (issue 34)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "file:///usr/share/doc/sysdream/runbook.md#"


def sections() -> dict[str, str]:
    """The runbook's sections by their anchor (GitHub's: the heading, lower case, spaces
    as dashes, punctuation dropped)."""
    text = (ROOT / "docs" / "runbook.md").read_text()
    parts = re.split(r"^#{2,3} (.+)$", text, flags=re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-"): body
            for h, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_links_to_its_own_runbook_section():
    found = sections()
    files = sorted((ROOT / "packaging" / "prometheus").glob("*-rules.yml"))
    alerts = [r for f in files for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r]
    assert len(files) == 2 and len(alerts) >= 23
    for rule in alerts:
        url = rule["annotations"].get("runbook_url", "")
        assert url == PREFIX + rule["alert"].lower(), (rule["alert"], url)
        body = found.get(rule["alert"].lower())
        assert body and "**Means:**" in body and "**Do:**" in body, rule["alert"]


def test_the_runbooks_own_links_land_on_a_section():
    found = sections()
    text = (ROOT / "docs" / "runbook.md").read_text()
    for anchor in re.findall(r"\]\(#([a-z0-9-]+)\)", text):
        assert anchor in found, anchor
