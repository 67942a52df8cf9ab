"""Every configuration key that advice names exists (issue 34): the Prometheus rules, the
pages under docs/, the README, the man page's source, the shipped configuration and the
code's messages name keys as `[section] key` or `--set section.key=VALUE`; each must be
in the schema (daemon/config.py), or following the advice ends in exit 12. A rule once
told operators to raise `[capture] ring_buffer_mb`, which never existed."""

from __future__ import annotations

import re
from pathlib import Path

from sysdream.daemon.config import SCHEMA

ROOT = Path(__file__).resolve().parents[2]
# the words that follow a section's name in running text without being a key of it
# ("settings in [worker] there", "by [capture] key", "[fleet] in the configuration");
# where one is a key of another section (`[fleet] key`), that mention is checked as usual
PROSE = {"and", "arrives", "in", "key", "keys", "section", "settings", "there"}

_SECTIONS = "|".join(re.escape(s) for s in sorted(
    {s.split(".")[0] for s in SCHEMA}, key=len, reverse=True))
_BRACKETED = re.compile(rf"\[((?:{_SECTIONS})(?:\.[a-z_]+)?)\]\s+`?([a-z_][a-z0-9_]*)")
_SET = re.compile(rf"\b((?:{_SECTIONS})(?:\.[a-z_]+)?)\.([a-z_][a-z0-9_]*)=")


def sources() -> list[Path]:
    files = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md",
             ROOT / "packaging" / "sysdream.8", ROOT / "packaging" / "sysdream.toml",
             *sorted((ROOT / "packaging" / "prometheus").glob("*.yml"))]
    for room in ("daemon", "probes", "model"):
        files += sorted((ROOT / room).rglob("*.py"))
    return files


def named_keys(text: str) -> list[tuple[int, str, str]]:
    """(line, section, key) for every key the text names."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in [*_BRACKETED.finditer(line), *_SET.finditer(line)]:
            section, key = m.groups()
            if m.re is _SET or key not in PROSE or key in SCHEMA.get(section, {}):
                out.append((n, section, key))
    return out


def test_the_finder_catches_the_key_that_never_existed():
    """The check is only as good as this: the advice the old rule gave is caught, in
    each form, and prose after a section's name is not taken for a key."""
    text = ("ring_buffer_full: raise [capture] ring_buffer_mb;\n"
            "sysdream run --set capture.ring_buffer_mb=8\n"
            "set `[alerts.json_lines] format`, see [fleet] in the configuration\n")
    assert named_keys(text) == [(1, "capture", "ring_buffer_mb"),
                                (2, "capture", "ring_buffer_mb"),
                                (3, "alerts.json_lines", "format")]


def test_every_key_named_by_a_rule_a_doc_the_man_page_or_a_message_exists():
    files = sources()
    assert len(files) > 50 and (ROOT / "docs" / "runbook.md") in files
    missing, seen = [], 0
    for path in files:
        for n, section, key in named_keys(path.read_text()):
            seen += 1
            if key not in SCHEMA.get(section, {}):
                missing.append(f"{path.relative_to(ROOT)}:{n}: [{section}] {key}")
    assert seen > 100, seen
    assert not missing, "keys that are not in daemon/config.py's SCHEMA:\n" + \
        "\n".join(missing)
