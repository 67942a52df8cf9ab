"""An alert's fields, its fingerprint and its message.

Every alert is one flat dict of fields (lower-case names, documented in docs/metrics.md).
journald receives them as SYSDREAM_<NAME> next to MESSAGE, MESSAGE_ID, PRIORITY and
SYSLOG_IDENTIFIER=sysdream; the JSON-lines output and the webhook carry the same names and
values; syslog carries the main ones as RFC 5424 structured data.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from ..context import identity
from ..detect.evidence import HALF_LIFE
from ..version import version
from .sinks import HOSTNAME, rfc3339

VERSION = version()
DIGESTS = identity.ExeDigests()     # exe_sha256, cached by device, inode and mtime
RUNBOOK = "docs/runbook.md"

# One fixed MESSAGE_ID per kind (journalctl MESSAGE_ID=...): generated once, never change.
MAX_ALERT_LINE = 1 << 20     # characters of one JSON-lines alert a reader takes


def json_lines(f, having: str | None = None, limit: int = MAX_ALERT_LINE):
    """Each non-empty line of a JSON-lines text file as the JSON object it holds, or None
    where it holds none (bad JSON, nested too deep, not an object, or over `limit`
    characters: such a line is passed over without being held). `having`: lines without
    it are passed over unparsed."""
    while line := f.readline(limit + 1):
        if len(line) > limit and not line.endswith("\n"):
            while (rest := f.readline(limit + 1)) and not rest.endswith("\n"):
                pass
            yield None
            continue
        if not line.strip() or (having is not None and having not in line):
            continue
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):
            doc = None
        yield doc if isinstance(doc, dict) else None


# The fields of an anomaly alert, in order (docs/metrics.md lists them; a test checks).
ALERT_FIELDS = ("kind", "alert_id", "fingerprint", "severity", "why", "hostname", "host_id",
                "boot_id", "pid", "tid", "comm", "exe", "exe_flags", "cmdline", "argv",
                "user", "uid", "euid", "gid", "login_user", "loginuid", "session", "ppid",
                "parent_cmdline", "lineage", "lineage_text", "cgroup_id", "cgroup", "unit",
                "container_id", "container_runtime", "process_start_ns", "context_source",
                "process_start", "entity_id", "exe_sha256", "exe_sha256_error", "score",
                "bound", "confidence", "sigmas", "model_id", "fleet_server", "evidence",
                "program", "alert_bound", "expected_false_alerts_per_hour", "episode",
                "novelty", "position", "syscalls", "context", "unknown_syscalls",
                "surprises", "attention", "suppressed", "incident_count", "latency_s",
                "window_start", "window_end", "time", "time_rfc3339", "schema",
                "sysdream_version", "incident_id", "incident_state", "evidence_kinds",
                "incident_first", "incident_last", "incident_evidence",
                "expected_false_per_hour", "program_id", "foreign_mount")


# The version of the alert's shape (docs/alert.schema.json): a field added, removed or
# changed in meaning makes a new one.
ALERT_SCHEMA = "sysdream-alert/5"     # 2: fleet_server; 3: novelty kind new_sequence;
#                                       4: why, identity, program and its alert bound;
#                                          incidents, program_id, foreign_mount;
#                                       5: program_id's unit


def fingerprint(context: dict, unknown: list[str], surprises: list[dict]) -> str:
    """Same program, same lineage, same kind of surprise: same fingerprint (repeats group).
    The kind of surprise is "syscalls never seen in training" (which ones is the window's
    position in the process: its start-up, its exit, both), else the most surprising one."""
    unusual = "\0unknown" if unknown else (surprises[0]["observed"] if surprises else "")
    text = "\0".join((context.get("exe", ""), context.get("lineage_text", ""),
                       context.get("container_id", ""), unusual))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def anomaly_fields(det, context: dict | None = None, comm: str | None = None,
                   fleet_server: str = "") -> dict:
    """The alert fields of a pipeline Detection; `context` from the process table and
    `comm` for the window's own time (Block.who); `fleet_server` the server that scores
    for this agent ("" for a daemon on its own)."""
    b, ex, m = det.block, det.explanation, det.model
    ctx = dict(context or {})
    ctx.setdefault("exe", b.exe)
    unknown = ex.get("unknown", [])
    sigmas = ex.get("sigmas", 0.0)
    flags = ctx.get("exe_flags", [])
    novelty = list(getattr(det, "novelty", []) or [])
    high = bool(unknown) or sigmas >= 2 * m.bound.z or "memfd" in flags or \
        "deleted" in flags or any(e["weight"] >= 1 for e in novelty)
    now = time.time()
    fields = {
        "kind": "anomaly", "alert_id": str(uuid.uuid4()),
        "fingerprint": fingerprint(ctx, unknown, ex["surprises"]),
        "severity": "high" if high else "medium", "why": "", "hostname": HOSTNAME,
        "host_id": identity.HOST_ID, "boot_id": identity.BOOT_ID,
        "pid": b.tgid, "tid": b.tid, "comm": b.comm if comm is None else comm}
    for key in ALERT_FIELDS[ALERT_FIELDS.index("exe"):ALERT_FIELDS.index("cgroup_id")]:
        fields[key] = ctx.get(key, "")
    fields["cgroup_id"] = b.cgroup
    for key in ("cgroup", "unit", "container_id", "container_runtime", "process_start_ns",
                "context_source"):
        fields[key] = ctx.get(key, "")
    fields.update(_identity(b.tgid, ctx))
    fields.update({
        "score": round(det.score, 6), "bound": round(m.bound.bound, 6),
        "confidence": m.bound.confidence, "sigmas": round(sigmas, 3),
        "model_id": m.model_id, "fleet_server": fleet_server,
        "evidence": f"{det.exceedances:.3g} >= {det.needed:.3g} in the last "
                    f"{det.evidence_m} windows and older ones halving every {HALF_LIFE}" + (
            f" in {len(det.episode['pids'])} processes of parent {det.episode['parent_pid']}"
            if det.episode else ""),
        **_bound_fields(det), "episode": det.episode or {}, "novelty": novelty,
        "position": ex["start"], "syscalls": ex["syscalls"], "context": ex.get("context", []),
        "unknown_syscalls": unknown, "surprises": ex["surprises"],
        "attention": ex.get("attention", []), "suppressed": 0, "incident_count": 1,
        "latency_s": round(max(0, time.monotonic_ns() - b.ns) / 1e9, 6),
        "window_start": rfc3339(identity.wall_of_monotonic(b.first_ns or b.ns)),
        "window_end": rfc3339(identity.wall_of_monotonic(b.ns)),
        "time": round(now, 3), "time_rfc3339": rfc3339(now), "schema": ALERT_SCHEMA,
        "sysdream_version": VERSION,
    })
    fields["why"] = why(fields)
    return fields


def _identity(pid: int, ctx: dict) -> dict:
    """process_start, entity_id and the executable's digest (or why there is none)."""
    start = int(ctx.get("process_start_ns") or 0)
    digest, error = DIGESTS.digest(pid, ctx.get("exe", ""), start)
    return {"process_start": rfc3339(identity.wall_of_monotonic(start)) if start else "",
            "entity_id": identity.entity_id(pid, start) if start else "",
            "exe_sha256": digest, "exe_sha256_error": error}


def _bound_fields(det) -> dict:
    """Whose alert bound the evidence was held against, the bound, and the false alerts an
    hour expected at it (null where the bound was configured, not fitted)."""
    m = det.model
    prog = "" if det.episode else getattr(det, "program", "")
    alert = getattr(m, "alert", None)
    fitted = alert is not None and abs(
        alert.bounds().get(prog, alert.bound) - det.needed) < 1e-9
    return {"program": prog, "alert_bound": round(float(det.needed), 6),
            "expected_false_alerts_per_hour":
                round(alert.expected_per_hour(), 6) if fitted else None}


def why(f: dict) -> str:
    """The alert in plain words, one line: who, what was unusual, how sure."""
    who = f"{f['comm']} (pid {f['pid']}, {f['exe'] or 'executable unknown'})"
    if f.get("unknown_syscalls"):
        what = f"made syscalls never seen on this host while learning " \
               f"({', '.join(f['unknown_syscalls'][:4])})"
    elif f.get("novelty"):
        e = f["novelty"][0]
        what = f"did something new to this host ({e['kind']} {e['what']})"
    else:
        what = "made syscall sequences unlike its usual ones"
    rate = f["expected_false_alerts_per_hour"]
    sure = f"; at this bound about {rate:.2g} false alerts an hour are expected on this " \
        "host" if rate is not None else ""
    group = " with its parent's other young children" if f.get("episode") else ""
    whose = f"of {f['program']}" if f["program"] else "for programs without their own"
    return f"{who} {what}{group}, often enough to cross the alert bound {whose}{sure}"


def mark_program(f: dict, prog) -> None:
    """The program's identity (file, mount namespace) in the alert; a program run from
    outside the initial mount namespace is marked, and its fingerprint is another (a
    bind mount over a real program's path never shares its alerts or allow entries)."""
    f["program_id"] = prog.to_json() if prog is not None else {}
    f["foreign_mount"] = bool(prog is not None and prog.foreign)
    f.update({k: f.get(k, d) for k, d in (("incident_id", ""), ("incident_state", ""),
                                          ("evidence_kinds", []), ("incident_first", 0.0),
                                          ("incident_last", 0.0), ("incident_evidence", []),
                                          ("expected_false_per_hour", None))})
    if f["foreign_mount"]:
        f["fingerprint"] = hashlib.sha256(
            f"{f['fingerprint']}\0foreign\0{prog.dev}:{prog.ino}".encode()).hexdigest()[:16]


BEHAVIOUR_CONTEXT = ("exe", "exe_flags", "cmdline", "user", "uid", "euid", "login_user",
                     "session", "ppid", "lineage", "lineage_text", "unit", "container_id")


def behaviour_fields(n, context: dict, fleet_server: str = "") -> dict:
    """The fields of a behaviour alert (detect/news.py News): the program, the news, who."""
    now = time.time()
    f = {"kind": "behaviour", "alert_id": str(uuid.uuid4()), "hostname": HOSTNAME,
         "pid": n.pid, "comm": n.comm, "cgroup_id": n.cgroup_id,
         "news": n.feature, "news_kind": n.kind,
         "settled": n.settled, "dangerous": n.dangerous, "program": n.program.label,
         "fleet_server": fleet_server, "suppressed": 0, "incident_count": 1,
         "time": round(now, 3), "time_rfc3339": rfc3339(now), "schema": ALERT_SCHEMA}
    for key in BEHAVIOUR_CONTEXT:
        f[key] = context.get(key, "")
    f["fingerprint"] = hashlib.sha256("\0".join(
        (n.program.key, n.kind, context.get("container_id", ""))).encode()).hexdigest()[:16]
    mark_program(f, n.program)
    return f


def message(f: dict) -> str:
    if f["kind"] == "behaviour":
        why = f" ({f['dangerous']})" if f["dangerous"] else \
            (" in a settled profile" if f["settled"] else " (profile not settled)")
        lineage = f", lineage {f['lineage_text']}" if f.get("lineage_text") else ""
        foreign = " [outside the initial mount namespace]" if f["foreign_mount"] else ""
        return (f"{f['severity']} incident {f['incident_id'][:8]}: {f['program']} "
                f"pid {f['pid']}{foreign}{lineage} did what it never did: {f['news']}{why}")
    return _anomaly_message(f)


def _anomaly_message(f: dict) -> str:
    """The one-line human MESSAGE of an alert: what happened in plain words, what to do
    next, then the figures. Every name in `f` is escaped where it enters the fields
    (daemon.printable), so it goes in as it is: escaping it again would double its
    backslashes."""
    s = f["surprises"][0] if f["surprises"] else None
    parts = []
    if f.get("exe_flags"):
        parts.append(f"executable {', '.join(f['exe_flags'])}")
    if f.get("uid", -1) != -1:
        parts.append(f"user {f['user'] or f['uid']}")
    if f.get("lineage_text"):
        parts.append(f"lineage {f['lineage_text']}")
    if f.get("container_id"):
        parts.append(f"container {f['container_id'][:12]}")
    elif f.get("unit"):
        parts.append(f"unit {f['unit']}")
    bound = f.get("alert_bound")
    parts.append(f"evidence {f['evidence']}" + (f" (alert bound {bound:.3g})"
                                                 if bound is not None else ""))
    cmp = "above" if f["score"] > f["bound"] else "within"
    parts.append(f"last window score {f['score']:.3f}, {cmp} the window bound "
                 f"{f['bound']:.3f}")
    if f.get("novelty"):
        parts.append("new to this host: " + ", ".join(f"{e['kind']} {e['what']}"
                                                      for e in f["novelty"][:4]))
    if s:
        parts.append(f"most surprising {s['observed']} (p={s['observed_p']:.2g}) where "
                     f"{s['expected']} was expected")
    if f["unknown_syscalls"]:
        parts.append(f"never-seen syscalls {', '.join(f['unknown_syscalls'])}")
    if f["suppressed"]:
        parts.append(f"{f['suppressed']} similar alerts suppressed")
    steps = f" Next: sysdream explain --alert-id {f['alert_id']}; if benign, sysdream " \
        f"allow --alert-id {f['alert_id']}; see {RUNBOOK}." if f.get("alert_id") else ""
    what = f.get("why") or f"anomalous syscalls in {f['comm']} pid {f['pid']}"
    return f"{what}.{steps} Details: {'; '.join(parts)}"
