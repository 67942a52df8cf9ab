"""The configuration reference (docs/configuration.md), generated from the schema
(daemon/config.py: every key, its default and what it accepts) and the shipped file's
comments (packaging/sysdream.toml: what each key does). tests/daemon/test_config.py keeps
the two in sync:

    .venv/bin/python -m sysdream.daemon.commands.confref > docs/configuration.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import SCHEMA, applies_at

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "sysdream.toml"


def comments(text: str) -> dict[tuple[str, str], str]:
    """(section, key) -> the comment lines right above the key (or above the run of keys
    it belongs to), joined."""
    out: dict[tuple[str, str], str] = {}
    section, pending, last = "", [], ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section, pending, last = s.strip("[]"), [], ""
        elif s.startswith("#"):
            if last:                 # a new comment after a key starts a new run
                pending, last = [], ""
            pending.append(s.lstrip("#").strip())
        elif "=" in s:
            key = s.split("=", 1)[0].strip()
            last = " ".join(p for p in pending if p)
            out[(section, key)] = last
        else:
            pending, last = [], ""
    return out


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def reference(text: str) -> str:
    notes = comments(text)
    lines = ["# Configuration reference", "",
             "Generated from the schema (daemon/config.py) and the comments of the shipped",
             "file (packaging/sysdream.toml) by",
             "`.venv/bin/python -m sysdream.daemon.commands.confref`;",
             "a test keeps it in sync. The daemon reads `/etc/sysdream/sysdream.toml` (or",
             "`--config FILE`), then every `conf.d/*.toml` beside it in name order, each key",
             "over the one before (`/etc/sysdream/conf.d/50-webhook.toml` changes what it",
             "names and nothing else). An unknown key or a bad value stops the daemon at start",
             "(exit 12) with the file, the line, the key and what is expected, and a reload",
             "keeps the running configuration; `sysdream config check` says the same without",
             "starting anything.", "",
             "*Applies at* says when a changed key takes effect in a running `sysdream run`:",
             "at a `reload` (SIGHUP, `systemctl reload sysdream`), or at the next `restart`;",
             "a reload logs one line for each restart key that changed (`sysdream: [metrics]",
             "port changed: applies at the next start`) and keeps the value it started with",
             "(the table is `RESTART_ONLY` in daemon/config.py).", ""]
    for section, keys in SCHEMA.items():
        lines += [f"## [{section}]", "",
                  "| key | default | accepted | applies at | what it does |",
                  "| --- | --- | --- | --- | --- |"]
        for key, spec in keys.items():
            kind = spec.form or (spec.kind.__name__ if isinstance(spec.kind, type)
                                 else "a number")
            doc = (spec.doc or notes.get((section, key), "")).replace("|", "\\|")
            lines.append(f"| `{key}` | `{_toml(spec.default)}` | {kind.replace('|', '/')} "
                         f"| {applies_at(section, key)} | {doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(reference(SHIPPED.read_text()))
