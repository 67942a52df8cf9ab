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

from ..detect.evidence import HALF_LIFE
from .sinks import HOSTNAME, rfc3339

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
ALERT_FIELDS = ("kind", "alert_id", "fingerprint", "severity", "hostname", "pid", "tid",
                "comm", "exe", "exe_flags", "cmdline", "argv", "user", "uid", "euid", "gid",
                "login_user", "loginuid", "session", "ppid", "lineage", "lineage_text",
                "cgroup_id", "cgroup", "unit", "container_id", "container_runtime",
                "process_start_ns", "context_source", "score", "bound", "confidence",
                "sigmas", "model_id", "fleet_server", "evidence", "episode", "novelty",
                "position", "syscalls", "context", "unknown_syscalls", "surprises",
                "attention", "suppressed", "incident_count", "latency_s", "time",
                "time_rfc3339", "schema", "incident_id", "incident_state", "evidence_kinds",
                "incident_first", "incident_last", "incident_evidence",
                "expected_false_per_hour", "program_id", "foreign_mount")


# The version of the alert's shape (docs/alert.schema.json): a field added, removed or
# changed in meaning makes a new one.
ALERT_SCHEMA = "sysdream-alert/4"     # 2: fleet_server; 3: novelty kind new_sequence;
#                                       4: incidents, program_id, foreign_mount


def fingerprint(context: dict, unknown: list[str], surprises: list[dict]) -> str:
    """Same program, same lineage, same kind of surprise: same fingerprint (repeats group).
    What was unusual is the syscalls never seen in training, else the most surprising one."""
    unusual = ",".join(sorted(unknown)) if unknown else \
        (surprises[0]["observed"] if surprises else "")
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
        "severity": "high" if high else "medium", "hostname": HOSTNAME,
        "pid": b.tgid, "tid": b.tid, "comm": b.comm if comm is None else comm}
    for key in ALERT_FIELDS[ALERT_FIELDS.index("exe"):ALERT_FIELDS.index("cgroup_id")]:
        fields[key] = ctx.get(key, "")
    fields["cgroup_id"] = b.cgroup
    for key in ("cgroup", "unit", "container_id", "container_runtime", "process_start_ns",
                "context_source"):
        fields[key] = ctx.get(key, "")
    fields.update({
        "score": round(det.score, 6), "bound": round(m.bound.bound, 6),
        "confidence": m.bound.confidence, "sigmas": round(sigmas, 3),
        "model_id": m.model_id, "fleet_server": fleet_server,
        "evidence": f"{det.exceedances:.3g} >= {det.needed:.3g} in the last "
                    f"{det.evidence_m} windows and older ones halving every {HALF_LIFE}" + (
            f" in {len(det.episode['pids'])} processes of parent {det.episode['parent_pid']}"
            if det.episode else ""),
        "episode": det.episode or {}, "novelty": novelty,
        "position": ex["start"], "syscalls": ex["syscalls"], "context": ex.get("context", []),
        "unknown_syscalls": unknown, "surprises": ex["surprises"],
        "attention": ex.get("attention", []), "suppressed": 0, "incident_count": 1,
        "latency_s": round(max(0, time.monotonic_ns() - b.ns) / 1e9, 6),
        "time": round(now, 3), "time_rfc3339": rfc3339(now), "schema": ALERT_SCHEMA,
    })
    return fields


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
    """The one-line human MESSAGE of an alert. Every name in `f` is escaped where it
    enters the fields (daemon.printable), so it goes in as it is: escaping it again would
    double its backslashes."""
    s = f["surprises"][0] if f["surprises"] else None
    why = (f"; most surprising {s['observed']} (p={s['observed_p']:.2g}) where "
           f"{s['expected']} was expected") if s else ""
    unk = f"; never-seen syscalls {', '.join(f['unknown_syscalls'])}" \
        if f["unknown_syscalls"] else ""
    sup = f" ({f['suppressed']} similar alerts suppressed)" if f["suppressed"] else ""
    flags = f" [{', '.join(f['exe_flags'])}]" if f.get("exe_flags") else ""
    who = f" user {f['user'] or f['uid']}" if f.get("uid", -1) != -1 else ""
    lineage = f", lineage {f['lineage_text']}" if f.get("lineage_text") else ""
    where = f", container {f['container_id'][:12]}" if f.get("container_id") else \
        (f", unit {f['unit']}" if f.get("unit") else "")
    new = "; new to this host: " + ", ".join(
        f"{e['kind']} {e['what']}" for e in f["novelty"][:4]) if f.get("novelty") else ""
    cmp = ">" if f["score"] > f["bound"] else "<="
    return (f"anomalous syscalls in {f['comm']} pid {f['pid']} "
            f"({f['exe'] or 'exe unknown'}){flags}{who}{lineage}{where}: "
            f"score {f['score']:.3f} {cmp} bound {f['bound']:.3f}, evidence {f['evidence']}"
            f"{new}{why}{unk}{sup}")
