"""An alert in the shape a SIEM reads without a parser: sysdream's own fields, Elastic
Common Schema, OCSF or Falco's JSON.

Each shape is one pure function of what a sink is handed (kind, syslog priority, message,
the alert's fields, MESSAGE_ID) to a JSON-ready dict; `[alerts] json_format` and
`[alerts.webhook] format` pick one by name. A field the alert does not carry (an older
daemon, an unknown value) is left out, never written empty, so that a SIEM's "exists"
query means something. What a schema has no name for stays under sysdream's own names:
`sysdream.*` in ECS and Falco, `unmapped` in OCSF.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from collections.abc import Callable
from importlib import metadata

# The schema versions the mappings were written against; a test validates each shape
# against that version's definitions (tests/daemon/data/ecs_flat-8.17.0.yml and the OCSF
# schema that ocsf-json-schema ships).
ECS_VERSION = "8.17.0"
OCSF_VERSION = "1.5.0"
FALCO_PRIORITY = {0: "Emergency", 1: "Alert", 2: "Critical", 3: "Error", 4: "Warning",
                  5: "Notice", 6: "Informational", 7: "Debug"}
ALERT = "anomaly"      # the one kind that is a finding; the rest are service events
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _version() -> str:
    try:
        return metadata.version("sysdream")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _when(f: dict) -> float:
    t = f.get("time")
    return t if isinstance(t, (int, float)) and not isinstance(t, bool) else time.time()


def _ms(stamp) -> int | None:
    """An RFC 3339 text (or epoch seconds) as epoch milliseconds; None when unreadable."""
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return round(stamp * 1000)
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return round(datetime.datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return None


def _present(v) -> bool:
    """A value worth writing: not absent, not empty, not the -1/0 of "unknown"."""
    if v is None or v == "" or v == [] or v == {}:
        return False
    return not (isinstance(v, int) and not isinstance(v, bool) and v < 0)


def _put(doc: dict, path: str, v) -> None:
    """doc[a][b][c] = v for path "a.b.c", unless v is absent."""
    if not _present(v):
        return
    *parents, leaf = path.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    doc[leaf] = v


def _parent(f: dict) -> dict:
    """The nearest ancestor in the lineage (its first entry), or {}."""
    lineage = f.get("lineage")
    if isinstance(lineage, list) and lineage and isinstance(lineage[0], dict):
        return lineage[0]
    return {}


def _sha256(f: dict) -> str:
    v = f.get("exe_sha256")
    return v if isinstance(v, str) and _SHA256.fullmatch(v) else ""


def _id(v) -> str:
    """A numeric id (uid, gid) as the text ECS and OCSF want; "" when unknown."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else ""


def native(kind: str, priority: int, msg: str, f: dict, message_id: str) -> dict:
    """sysdream's own fields (docs/alert.schema.json), as journald carries them."""
    return {"message": msg, "message_id": message_id, "priority": priority, **f}


# Alert fields that ECS names; the rest go under sysdream.*
ECS_MAPPED = {"time", "time_rfc3339", "alert_id", "severity", "hostname", "pid", "tid",
              "comm", "exe", "cmdline", "argv", "user", "uid", "euid", "gid", "ppid",
              "container_id", "container_runtime", "host_id", "boot_id", "exe_sha256",
              "entity_id", "parent_cmdline", "parent_entity_id", "process_start",
              "window_start", "window_end", "why", "sysdream_version"}
# event.severity as Elastic Security numbers its severities (low 21 ... critical 99)
ECS_SEVERITY = {"critical": 99, "high": 73, "medium": 47, "low": 21}


def ecs(kind: str, priority: int, msg: str, f: dict, message_id: str) -> dict:
    """Elastic Common Schema 8.x: an anomaly is event.kind alert in category process."""
    doc: dict = {"@timestamp": f.get("time_rfc3339") or rfc3339(_when(f)), "message": msg}
    _put(doc, "ecs.version", ECS_VERSION)
    alert = kind == ALERT
    _put(doc, "event.kind", "alert" if alert else "event")
    _put(doc, "event.category", ["process"] if alert else ["host"])
    _put(doc, "event.type", ["info"])
    _put(doc, "event.action", kind)
    _put(doc, "event.code", message_id)
    _put(doc, "event.id", f.get("alert_id"))
    _put(doc, "event.module", "sysdream")
    _put(doc, "event.dataset", "sysdream.alerts" if alert else "sysdream.events")
    _put(doc, "event.severity", ECS_SEVERITY.get(f.get("severity", "")))
    _put(doc, "event.reason", f.get("why"))
    _put(doc, "event.start", f.get("window_start"))
    _put(doc, "event.end", f.get("window_end"))
    _put(doc, "log.syslog.severity.code", priority)
    _put(doc, "rule.name", f"sysdream {kind}")
    _put(doc, "rule.ruleset", "sysdream")
    _put(doc, "agent.type", "sysdream")
    _put(doc, "agent.version", f.get("sysdream_version") or _version())
    _put(doc, "host.name", f.get("hostname"))
    _put(doc, "host.hostname", f.get("hostname"))
    _put(doc, "host.id", f.get("host_id"))
    _put(doc, "host.boot.id", f.get("boot_id"))
    if _present(f.get("pid")):
        argv = f.get("argv") if isinstance(f.get("argv"), list) else []
        parent = _parent(f)
        _put(doc, "process.pid", f.get("pid"))
        _put(doc, "process.thread.id", f.get("tid"))
        _put(doc, "process.name", f.get("comm"))
        _put(doc, "process.executable", f.get("exe"))
        _put(doc, "process.command_line", f.get("cmdline"))
        _put(doc, "process.args", argv)
        _put(doc, "process.args_count", len(argv) or None)
        _put(doc, "process.hash.sha256", _sha256(f))
        _put(doc, "process.entity_id", f.get("entity_id"))
        _put(doc, "process.start", f.get("process_start"))
        _put(doc, "process.parent.pid", f.get("ppid") or None)
        _put(doc, "process.parent.name", parent.get("comm"))
        _put(doc, "process.parent.executable", parent.get("exe"))
        _put(doc, "process.parent.command_line", f.get("parent_cmdline"))
        _put(doc, "process.parent.entity_id", f.get("parent_entity_id"))
        _put(doc, "user.name", f.get("user"))
        _put(doc, "user.id", _id(f.get("uid")))
        _put(doc, "user.effective.id", _id(f.get("euid")))
        _put(doc, "group.id", _id(f.get("gid")))
    _put(doc, "container.id", f.get("container_id"))
    _put(doc, "container.runtime", f.get("container_runtime"))
    rest = {k: v for k, v in f.items() if k not in ECS_MAPPED and _present(v)}
    if rest:
        doc["sysdream"] = rest
    return doc


# OCSF's severity_id: 1 informational, 2 low, 3 medium, 4 high, 5 critical
OCSF_SEVERITY = {"critical": (5, "Critical"), "high": (4, "High"),
                 "medium": (3, "Medium"), "low": (2, "Low")}
OCSF_BY_PRIORITY = {0: (6, "Fatal"), 1: (5, "Critical"), 2: (5, "Critical"),
                    3: (4, "High"), 4: (3, "Medium"), 5: (2, "Low"),
                    6: (1, "Informational"), 7: (1, "Informational")}
OCSF_MAPPED = ECS_MAPPED | {"kind", "model_id", "incident_count", "fingerprint"}


def _ocsf_file(path: str, sha256: str = "") -> dict:
    """An OCSF file object (type 1, a regular file) for an executable's path."""
    out: dict = {"name": os.path.basename(path) or path, "path": path, "type_id": 1,
                 "type": "Regular File"}
    if sha256:
        out["hashes"] = [{"algorithm_id": 3, "algorithm": "SHA-256", "value": sha256}]
    return out


def _ocsf_process(f: dict) -> dict:
    proc: dict = {}
    for key, v in (("pid", f.get("pid")), ("tid", f.get("tid")), ("name", f.get("comm")),
                   ("cmd_line", f.get("cmdline")), ("uid", f.get("entity_id")),
                   ("created_time", _ms(f.get("process_start")))):
        _put(proc, key, v)
    if _present(f.get("exe")):
        proc["file"] = _ocsf_file(f["exe"], _sha256(f))
    user: dict = {}
    _put(user, "name", f.get("user"))
    _put(user, "uid", _id(f.get("uid")))
    if user:
        proc["user"] = user
    parent, p = {}, _parent(f)
    _put(parent, "pid", f.get("ppid") or None)
    _put(parent, "name", p.get("comm"))
    _put(parent, "cmd_line", f.get("parent_cmdline"))
    _put(parent, "uid", f.get("parent_entity_id"))
    if _present(p.get("exe")):
        parent["file"] = _ocsf_file(p["exe"])
    if parent:
        proc["parent_process"] = parent
    return proc


def ocsf(kind: str, priority: int, msg: str, f: dict, message_id: str) -> dict:
    """OCSF: an anomaly as a Detection Finding (class 2004), a service event as a Base
    Event (class 0); sysdream's own fields under `unmapped`."""
    t = _ms(_when(f))
    sev_id, sev = OCSF_SEVERITY.get(f.get("severity", "")) or \
        OCSF_BY_PRIORITY.get(priority, (0, "Unknown"))
    version = f.get("sysdream_version") or _version()
    meta: dict = {"version": OCSF_VERSION,
                  "product": {"name": "sysdream", "vendor_name": "sysdream",
                              "version": version},
                  "event_code": kind}
    _put(meta, "uid", f.get("alert_id"))
    _put(meta, "correlation_uid", f.get("fingerprint"))
    device: dict = {"type_id": 0, "type": "Unknown"}
    _put(device, "hostname", f.get("hostname"))
    _put(device, "name", f.get("hostname"))
    _put(device, "uid", f.get("host_id"))
    _put(device, "boot_uid", f.get("boot_id"))
    if kind != ALERT:
        doc = {"class_uid": 0, "class_name": "Base Event", "category_uid": 0,
               "category_name": "Uncategorized", "activity_id": 99, "activity_name": kind,
               "type_uid": 99, "type_name": f"Base Event: {kind}", "time": t,
               "severity_id": sev_id, "severity": sev, "message": msg, "metadata": meta}
    else:
        info: dict = {"uid": f.get("alert_id") or message_id,
                      "title": f"anomalous syscalls in {f.get('comm') or 'a process'}",
                      "types": ["anomaly"],
                      "analytic": {"name": "sysdream", "type_id": 4,
                                   "type": "Learning (ML/DL)"},
                      "created_time": t}
        _put(info, "desc", f.get("why") or msg)
        _put(info["analytic"], "uid", f.get("model_id"))
        evidence: dict = {"process": _ocsf_process(f)}
        container: dict = {}
        _put(container, "uid", f.get("container_id"))
        _put(container, "runtime", f.get("container_runtime"))
        if container:
            evidence["container"] = container
        doc = {"class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2,
               "category_name": "Findings", "activity_id": 1, "activity_name": "Create",
               "type_uid": 200401, "type_name": "Detection Finding: Create", "time": t,
               "severity_id": sev_id, "severity": sev, "status_id": 1, "status": "New",
               "is_alert": True, "message": msg, "metadata": meta, "finding_info": info,
               "device": device, "evidences": [evidence]}
        _put(doc, "start_time", _ms(f.get("window_start")))
        _put(doc, "end_time", _ms(f.get("window_end")))
        _put(doc, "count", f.get("incident_count"))
    rest = {k: v for k, v in f.items() if k not in OCSF_MAPPED and _present(v)}
    if rest:
        doc["unmapped"] = rest
    return doc


def falco(kind: str, priority: int, msg: str, f: dict, message_id: str) -> dict:
    """An alert as Falco writes one (json_output), so that Falcosidekick and Falco's rule
    conditions take it: output, priority, rule, time, hostname, tags, source, and
    output_fields under Falco's own names (proc.exepath, proc.cmdline, proc.pname,
    user.name, container.id ...) beside every sysdream field as sysdream.<name>."""
    t = _when(f)
    flat: dict = {}
    argv = f.get("argv") if isinstance(f.get("argv"), list) else []
    args = " ".join(str(a) for a in argv[1:])
    parent = _parent(f)
    if _present(f.get("pid")):
        comm = f.get("comm") or ""
        for key, v in (
                ("evt.time", round(t * 1000) * 1_000_000), ("proc.pid", f.get("pid")),
                ("thread.tid", f.get("tid")), ("proc.name", comm),
                ("proc.exe", argv[0] if argv else None), ("proc.exepath", f.get("exe")),
                ("proc.args", args),
                # Falco's proc.cmdline is the name and the arguments, not argv[0]
                ("proc.cmdline", f"{comm} {args}".strip() if comm else None),
                ("proc.ppid", f.get("ppid") or None), ("proc.pname", parent.get("comm")),
                ("proc.pexepath", parent.get("exe")),
                ("proc.pcmdline", f.get("parent_cmdline")),
                ("proc.is_exe_from_memfd", "memfd" in (f.get("exe_flags") or []) or None),
                ("user.name", f.get("user")), ("user.uid", f.get("uid")),
                ("user.loginuid", f.get("loginuid")),
                ("user.loginname", f.get("login_user")), ("group.gid", f.get("gid")),
                # Falco writes "host" for a process outside any container, and a 12-digit id
                ("container.id", (f.get("container_id") or "host")[:12]),
                ("container.full_id", f.get("container_id"))):
            if _present(v):
                flat[key] = v
    for k, v in f.items():
        flat[f"sysdream.{k}"] = v if isinstance(v, (str, int, float, bool)) or v is None \
            else json.dumps(v, separators=(",", ":"))
    tags = ["sysdream", kind]
    if f.get("severity"):
        tags.append(str(f["severity"]))
    return {"output": msg, "priority": FALCO_PRIORITY.get(priority, "Warning"),
            "rule": f"sysdream {kind}", "time": rfc3339(t).replace("Z", "000000Z"),
            "hostname": f.get("hostname") or os.uname().nodename, "output_fields": flat,
            "tags": tags, "source": "sysdream"}


SHAPES: dict[str, Callable[[str, int, str, dict, str], dict]] = {
    "sysdream": native, "ecs": ecs, "ocsf": ocsf, "falco": falco}
FORMATS = tuple(SHAPES)


def shape(fmt: str, kind: str, priority: int, msg: str, fields: dict,
          message_id: str) -> dict:
    """The alert or event as format `fmt` (one of FORMATS) lays it out."""
    return SHAPES[fmt](kind, priority, msg, fields, message_id)
