"""`sysdream allow`: an operator's answer to a false alert.

An allow entry marks a pattern benign. It matches an alert by one of:

    fingerprint   the alert's fingerprint (same executable, lineage, container and kind of
                  surprise): what `--alert-id` resolves to, the narrowest choice
    exe           every alert of one executable (its absolute path): broad, since an
                  attacker who runs that program's code inherits it; a memfd or a
                  deleted file is refused (anyone can make one with any name)
    lineage       the alert's chain of executables, oldest first, each a full path (or
                  a glob over one: `*` never crosses `/`), e.g.
                  "* > /usr/sbin/cron > /usr/bin/dash > /usr/bin/bash"; a leading
                  "*" stands for any ancestors. It matches the full paths of the
                  ancestors' images, never the names a process gives itself (comm) and
                  never the display text: a file named "x > cron" cannot pose as a chain.

`--alert-id` takes only a journald entry that sysdream wrote (alerting/origin.py) and
shows who wrote it. Entries live in STATE_DIRECTORY/allow.json (written atomically, mode
0600, owned by the state directory's owner: the daemon's DynamicUser). The running
daemon checks the file every second and takes a change at once: the probes stay attached,
nothing restarts. An allowed alert is not sent; it is counted
(`sysdream_alerts_allowed_total{exe}`). Each entry keeps the alert it came from (its
syscalls and their context), for the next retraining to learn from.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..context.cgroups import path_match
from . import fields, origin

FORMAT = 1
FILE = "allow.json"
KINDS = ("fingerprint", "exe", "lineage")
MAX_ENTRIES = 10000
KEEP = ("alert_id", "fingerprint", "exe", "lineage_text", "comm", "cmdline", "syscalls",
        "context", "unknown_syscalls", "novelty", "time_rfc3339", "model_id", "origin")
SEP = " > "
UNKNOWN = "<no image>"      # an ancestor known only by its comm: matches only a `*`


def chain(alert: dict) -> list[str]:
    """The alert's executables, oldest ancestor first, then its own: full paths from the
    structured `lineage` field (never the comm, which a process sets itself)."""
    ancestors = alert.get("lineage")
    out = []
    if isinstance(ancestors, list):
        for a in reversed(ancestors):
            exe = a.get("exe") if isinstance(a, dict) else None
            out.append(exe if isinstance(exe, str) and exe.startswith("/") else UNKNOWN)
    exe = alert.get("exe")
    out.append(exe if isinstance(exe, str) and exe.startswith("/") else UNKNOWN)
    return out


def lineage_matches(pattern: str, alert: dict) -> bool:
    """Component by component over `chain(alert)`; a leading "*" is any ancestors."""
    parts = pattern.split(SEP)
    links = chain(alert)
    if parts[0] == "*":
        parts = parts[1:]
        links = links[-len(parts):] if len(parts) <= len(links) else []
    return len(parts) == len(links) and all(
        link != UNKNOWN and path_match(link, part) for part, link in zip(parts, links, strict=True))


def _check_lineage(value: str) -> None:
    parts = value.split(SEP)
    if not [p for p in parts if p != "*"]:
        raise ValueError(f"allow --lineage {value!r}: matches every alert; name at least "
                         "one program")
    bad = [p for i, p in enumerate(parts) if not p.startswith("/") and not (i == 0 and p == "*")]
    if bad:
        raise ValueError(f"allow --lineage {value!r}: {bad[0]!r} is not a full path; give "
                         "each program as its absolute path, separated by \" > \" (only the "
                         "first may be \"*\": any ancestors), e.g. "
                         "'* > /usr/sbin/cron > /usr/bin/dash > /usr/bin/bash'")


@dataclass
class Entry:
    id: str
    kind: str
    value: str
    created: str
    comment: str = ""
    alert: dict | None = None

    def matches(self, fields: dict) -> bool:
        if self.kind == "fingerprint":
            return fields.get("fingerprint") == self.value
        if self.kind == "exe":
            return fields.get("exe") == self.value and not _borrowed(fields)
        return lineage_matches(self.value, fields)

    def to_json(self) -> dict:
        d = {"id": self.id, "kind": self.kind, "value": self.value, "created": self.created,
             "comment": self.comment}
        if self.alert:
            d["alert"] = self.alert
        return d


class AllowList:
    def __init__(self, entries: list[Entry] | None = None, path: Path | None = None):
        self.entries = entries or []
        self.path = path
        self.stamp: tuple = ()

    @classmethod
    def load(cls, path: Path) -> AllowList:
        """The list in `path` (empty when there is no file); ConfigError naming the file
        and the fix when it cannot be used."""
        try:
            st = path.stat()
            text = path.read_text()
        except FileNotFoundError:
            return cls([], path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); fix its permissions or remove it "
                              "(`sysdream allow --list` then re-add)") from None
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise ConfigError(f"{path}: not an allow list (bad JSON); restore it or remove "
                              "it and re-add the entries") from None
        entries = _entries(doc, path)
        out = cls(entries, path)
        out.stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        return out

    def changed(self) -> bool:
        """Whether the file is not the one loaded (a cheap stat)."""
        try:
            st = self.path.stat()
            return (st.st_ino, st.st_mtime_ns, st.st_size) != self.stamp
        except FileNotFoundError:
            return bool(self.stamp)
        except OSError:
            return False

    def match(self, fields: dict) -> Entry | None:
        for e in self.entries:
            if e.matches(fields):
                return e
        return None

    def add(self, kind: str, value: str, comment: str = "", alert: dict | None = None
            ) -> Entry:
        if kind not in KINDS:
            raise ValueError(f"allow: unknown kind {kind!r}: use {', '.join(KINDS)}")
        value = value.strip()
        if not value or "\0" in value:
            raise ValueError(f"allow: an empty {kind} would match nothing useful")
        if kind == "exe" and (value.startswith("memfd:") or value.startswith("/memfd:")
                              or value.endswith(" (deleted)")):
            raise ValueError(f"allow --exe {value}: a memfd or deleted file has no path an "
                             "operator can vouch for (anyone can make one with that name); "
                             "allow the alert by --alert-id or --fingerprint")
        if kind == "exe" and not value.startswith("/"):
            raise ValueError(f"allow --exe {value}: give the executable's absolute path, "
                             "as alerts show it")
        if kind == "lineage":
            _check_lineage(value)
        for e in self.entries:
            if (e.kind, e.value) == (kind, value):
                return e
        if len(self.entries) >= MAX_ENTRIES:
            raise ValueError(f"allow: {MAX_ENTRIES} entries already; remove some first")
        e = Entry(secrets.token_hex(4), kind, value,
                  time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), comment,
                  {k: alert[k] for k in KEEP if k in alert} if alert else None)
        self.entries.append(e)
        return e

    def remove(self, entry_id: str) -> Entry:
        for i, e in enumerate(self.entries):
            if e.id == entry_id:
                return self.entries.pop(i)
        raise ValueError(f"allow --remove {entry_id}: no such entry (see `sysdream allow "
                         "--list`)")

    def save(self) -> None:
        """Atomically, mode 0600 (entries carry command lines), owned by the state
        directory's owner: under the shipped unit that is the daemon's DynamicUser, which
        could not read a root-owned 0600 file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "entries": [e.to_json() for e in self.entries]}
        fd, tmp = tempfile.mkstemp(prefix=".allow.", dir=self.path.parent)
        try:
            owner = os.stat(self.path.parent)
            if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
                os.fchown(fd, owner.st_uid, owner.st_gid)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _entries(doc, path: Path) -> list[Entry]:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{path}: {why}; restore it or remove it and re-add the entries")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad("not a sysdream allow list of this version")
    raw = doc.get("entries")
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise bad(f"entries must be a list of at most {MAX_ENTRIES}")
    out = []
    for i, d in enumerate(raw):
        if not isinstance(d, dict) or d.get("kind") not in KINDS or not all(
                isinstance(d.get(k), str) for k in ("id", "value", "created")) or \
                not d["value"] or not isinstance(d.get("comment", ""), str) or \
                not isinstance(d.get("alert") or {}, dict):
            raise bad(f"entry {i} is not an allow entry (id, kind of {'/'.join(KINDS)}, "
                      "value, created)")
        out.append(Entry(d["id"], d["kind"], d["value"], d["created"], d.get("comment", ""),
                         d.get("alert")))
    return out


def _borrowed(alert: dict) -> bool:
    flags = alert.get("exe_flags") or []
    return isinstance(flags, list) and bool({"memfd", "deleted"} & set(flags))


def find_alert(alert_id: str, json_lines: str | None, state_dir: Path | None = None
               ) -> dict:
    """An alert's fields by its id: from a JSON-lines file when given, else journald
    (only an entry sysdream wrote: origin.pick)."""
    if json_lines:
        try:
            with open(json_lines, encoding="utf-8", errors="replace") as f:
                for a in fields.json_lines(f, having=alert_id):
                    if a is not None and a.get("alert_id") == alert_id:
                        return a
        except OSError as exc:
            raise ValueError(f"--json-lines {json_lines}: {exc.strerror}") from None
        raise ValueError(f"--alert-id {alert_id}: not in {json_lines}")
    try:
        out = subprocess.run(["journalctl", "-o", "json", "--no-pager",
                              f"SYSDREAM_ALERT_ID={alert_id}"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"--alert-id: cannot ask journald ({exc}); give "
                         "--json-lines FILE (or, for allow, --fingerprint)") from None
    found = [e for e in fields.json_lines(io.StringIO(out.stdout), having=alert_id)
             if e is not None and e.get("SYSDREAM_ALERT_ID") == alert_id]
    try:
        e = origin.pick(found, f"--alert-id {alert_id}", state_dir)
    except LookupError:
        e = None
    if e is not None:
        alert = {k[len("SYSDREAM_"):].lower(): _journal_value(v) for k, v in e.items()
                 if k.startswith("SYSDREAM_")}
        alert["origin"] = origin.origin(e)
        return alert
    raise ValueError(f"--alert-id {alert_id}: no such alert in journald; give "
                     "--json-lines FILE if alerts go there (or, for allow, --fingerprint)")


def _journal_value(v):
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except (ValueError, RecursionError):
            return v
    return v


def run(args, state_dir: Path, out=None) -> int:
    """The `sysdream allow` verb."""
    out = out or sys.stdout     # looked up now: a test (or caller) may have replaced it
    path = state_dir / FILE
    allow = AllowList.load(path)
    as_json = getattr(args, "format", "text") == "json"
    if args.list and as_json:
        print(json.dumps({"path": str(path), "entries": [e.to_json() for e in allow.entries]}),
              file=out)
        return 0
    if args.list:
        if not allow.entries:
            print(f"no allow entries in {path}", file=out)
        for e in allow.entries:
            src = f" (from alert {e.alert['alert_id']})" if e.alert and \
                e.alert.get("alert_id") else ""
            note = f"  # {e.comment}" if e.comment else ""
            print(f"{e.id}  {e.kind:<11} {e.value}  {e.created}{src}{note}", file=out)
        return 0
    if args.remove:
        e = allow.remove(args.remove)
        allow.save()
        if as_json:
            print(json.dumps({"removed": e.to_json(), "path": str(path)}), file=out)
            return 0
        print(f"removed {e.id}: {e.kind} {e.value}; alerts it held back are raised again "
              "(the daemon takes the change within a second)", file=out)
        return 0
    alert = None
    if args.alert_id:
        alert = find_alert(args.alert_id, args.json_lines, state_dir)
        if alert.get("origin"):
            print(f"alert {args.alert_id} was written by {alert['origin']}", file=out)
        kind, value = "fingerprint", str(alert.get("fingerprint") or "")
        if not value:
            raise ValueError(f"allow --alert-id {args.alert_id}: that alert has no "
                             "fingerprint; allow by --exe or --lineage")
    elif args.fingerprint:
        kind, value = "fingerprint", args.fingerprint
    elif args.exe:
        kind, value = "exe", args.exe
    elif args.lineage:
        kind, value = "lineage", args.lineage
    else:
        raise ValueError("allow: say what to allow (--alert-id, --fingerprint, --exe or "
                         "--lineage), or --list, or --remove ID")
    e = allow.add(kind, value, args.comment or "", alert)
    allow.save()
    if as_json:
        print(json.dumps({"added": e.to_json(), "path": str(path)}), file=out)
        return 0
    what = f" ({alert.get('exe', '')}, lineage {alert.get('lineage_text', '')})" if alert \
        else ""
    print(f"allowed {e.id}: {kind} {value}{what}; the daemon takes it within a second, "
          f"written to {path}", file=out)
    return 0
