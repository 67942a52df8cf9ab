"""Alerts and service events: their fields, fingerprints, rate limits, and the sinks the
configuration enables (daemon/sinks.py: journald, JSON lines, syslog, webhook).

Every alert is one flat dict of fields (lower-case names, documented in docs/metrics.md).
journald receives them as SYSDREAM_<NAME> next to MESSAGE, MESSAGE_ID, PRIORITY and
SYSLOG_IDENTIFIER=sysdream; the JSON-lines output and the webhook carry the same names and
values; syslog carries the main ones as RFC 5424 structured data.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict, deque

from . import sinks
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


MESSAGE_IDS = {
    "anomaly": "6c1f3a9e4b2d4f7e8a05d2c9b7e1f342",
    "alerts-suppressed": "3f7b9d1e5c2a4e86b0d4f6a8c1e3b527",
    "model-loaded": "2e8d4b7a19c04f3d96a1e5b0c7d2f815",
    "model-rejected": "9b4e7c2d5a1f4e08b3c6d9a2e7f10c54",
    "learning-started": "47a2c9e1d3b54f6a8e0c1b7d2f9e3a60",
    "learning-complete": "d15e8a3c7b2f4096a4c3e1b8d7f20a95",
    "learning-failed": "a8c3f1e6b9d24c7e95b0a2d4c8e71f36",
    "model-retrained": "fda2c0dd74f84a588a90626cc8efbff4",
    "retraining-rejected": "ca8e4d9a8016406e852f7f66ebd2a590",
}
# syslog priorities
CRIT, ERR, WARNING, NOTICE, INFO = 2, 3, 4, 5, 6

# The fields of an anomaly alert, in order (docs/metrics.md lists them; a test checks).
ALERT_FIELDS = ("kind", "alert_id", "fingerprint", "severity", "hostname", "pid", "tid",
                "comm", "exe", "exe_flags", "cmdline", "argv", "user", "uid", "euid", "gid",
                "login_user", "loginuid", "session", "ppid", "lineage", "lineage_text",
                "cgroup_id", "cgroup", "unit", "container_id", "container_runtime",
                "process_start_ns", "context_source", "score", "bound", "confidence",
                "sigmas", "model_id", "fleet_server", "evidence", "episode", "novelty",
                "position", "syscalls", "context", "unknown_syscalls", "surprises",
                "attention", "suppressed", "incident_count", "latency_s", "time",
                "time_rfc3339", "schema")
# The version of the alert's shape (docs/alert.schema.json): a field added, removed or
# changed in meaning makes a new one.
ALERT_SCHEMA = "sysdream-alert/3"     # 2: fleet_server; 3: novelty kind new_sequence

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
                    f"{det.evidence_m} windows" + (
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


def message(f: dict) -> str:
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


class RateLimiter:
    """Per fingerprint, a token bucket of `burst` alerts refilled over `interval` s; across
    all of them, at most `ceiling` alerts per minute. Nothing is dropped unaccounted:
    every alert held back is counted per fingerprint, reported with the next one sent for
    it, and summarised by `take_summary()`."""

    def __init__(self, burst: int, interval: float, ceiling: int = 60,
                 max_keys: int = 4096):
        self.burst, self.interval, self.ceiling, self.max_keys = burst, interval, ceiling, \
            max_keys
        self.tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.suppressed: dict[str, int] = {}
        self.incidents: OrderedDict[str, int] = OrderedDict()
        self.pending: OrderedDict[str, dict] = OrderedDict()   # held back since the summary
        self._global = (float(ceiling), None)

    def _bucket(self, tokens: float, last: float, now: float, size: float, per: float):
        return min(size, tokens + (now - last) * size / per)

    def allow(self, key: str, now: float | None = None, about: dict | None = None
              ) -> tuple[bool, int, int]:
        """(send?, suppressed since the last one sent for this key, incidents so far)."""
        now = time.monotonic() if now is None else now
        self.incidents[key] = self.incidents.get(key, 0) + 1
        self.incidents.move_to_end(key)
        while len(self.incidents) > self.max_keys:
            self.incidents.popitem(last=False)
        count = self.incidents[key]
        tokens, last = self.tokens.get(key, (float(self.burst), now))
        tokens = self._bucket(tokens, last, now, self.burst, self.interval)
        g_tokens, g_last = self._global
        g_tokens = self._bucket(g_tokens, now if g_last is None else g_last, now,
                                self.ceiling, 60.0)
        if tokens >= 1 and g_tokens >= 1:
            self.tokens[key] = (tokens - 1, now)
            self.tokens.move_to_end(key)
            self._global = (g_tokens - 1, now)
            self._trim()
            return True, self.suppressed.pop(key, 0), count
        self.tokens[key] = (tokens, now)
        self._global = (g_tokens, now)
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        p = self.pending.setdefault(key, {"fingerprint": key, "count": 0,
                                          **(about or {})})
        p["count"] += 1
        self._trim()
        return False, 0, count

    def _trim(self) -> None:
        while len(self.tokens) > self.max_keys:
            old, _ = self.tokens.popitem(last=False)
            self.suppressed.pop(old, None)
        while len(self.pending) > self.max_keys:
            self.pending.popitem(last=False)

    def take_summary(self) -> list[dict]:
        """What was held back since the last call, most held back first."""
        out = sorted(self.pending.values(), key=lambda p: -p["count"])
        self.pending.clear()
        return out


class Deliveries:
    """When this daemon last handed something to journald (CLOCK_MONOTONIC ns), so that
    journald's handling of it can be told apart from journald's own behaviour
    (docs/architecture.md, "No feedback loop")."""

    def __init__(self, keep: int = 4096):
        self.sent: deque[int] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def note(self) -> None:
        with self._lock:
            self.sent.append(time.monotonic_ns())

    def near(self, first_ns: int, last_ns: int, slack_ns: int) -> bool:
        """Whether a send happened in [first_ns - slack_ns, last_ns]."""
        with self._lock:
            for t in reversed(self.sent):
                if t <= last_ns:
                    return t >= first_ns - slack_ns
        return False


def build_sinks(cfg, deliveries: Deliveries | None = None) -> sinks.Sinks:
    """The sinks a configuration enables ([alerts], [alerts.syslog], [alerts.webhook]);
    ConfigError when the JSON-lines file cannot be opened."""
    a = cfg.alerts
    out: list[sinks.Sink] = []
    if a.journald:
        out.append(sinks.JournaldSink())
    if a.json_lines:
        out.append(sinks.JsonLinesSink(a.json_lines, a.json_format))
    out += network_sinks(cfg)
    return sinks.Sinks(out, MESSAGE_IDS, deliveries)


def network_sinks(cfg) -> list:
    out = []
    s, w = cfg.alerts_syslog, cfg.alerts_webhook
    if s.enabled:
        out.append(sinks.SyslogSink(s.address, s.protocol, s.facility, s.queue, s.max_bytes,
                                    kinds=tuple(MESSAGE_IDS) if s.events else
                                    sinks.ALERT_KINDS, ca_file=s.ca_file))
    if w.enabled:
        out.append(sinks.WebhookSink(w.url, w.format, tuple(w.headers), float(w.timeout_s),
                                     w.retries, float(w.backoff_s), w.queue,
                                     tuple(MESSAGE_IDS) if w.events else sinks.ALERT_KINDS,
                                     w.ca_file, w.headers_file, w.headers_credential))
    return out
