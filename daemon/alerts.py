"""Alerts and service events: to journald (systemd-python), optionally as JSON lines.

Every alert is one flat dict of fields (lower-case names, documented in docs/metrics.md).
journald receives them as SYSDREAM_<NAME> next to MESSAGE, MESSAGE_ID, PRIORITY and
SYSLOG_IDENTIFIER=sysdream; the JSON-lines output carries the same names and values.

journald down or absent: libsystemd drops a message silently when journald's socket does
not exist, so the sink first checks that the socket accepts a connection. When it does not,
the alert goes to stderr as a JSON line, `sysdream_journald_failures_total` counts it, and
the next alert tries journald again.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

from .pipeline import exe_of

# One fixed MESSAGE_ID per kind (journalctl MESSAGE_ID=...): generated once, never change.
MESSAGE_IDS = {
    "anomaly": "6c1f3a9e4b2d4f7e8a05d2c9b7e1f342",
    "model-loaded": "2e8d4b7a19c04f3d96a1e5b0c7d2f815",
    "model-rejected": "9b4e7c2d5a1f4e08b3c6d9a2e7f10c54",
    "learning-started": "47a2c9e1d3b54f6a8e0c1b7d2f9e3a60",
    "learning-complete": "d15e8a3c7b2f4096a4c3e1b8d7f20a95",
    "learning-failed": "a8c3f1e6b9d24c7e95b0a2d4c8e71f36",
}
# syslog priorities
CRIT, ERR, WARNING, NOTICE, INFO = 2, 3, 4, 5, 6

# The fields of an anomaly alert, in order (docs/metrics.md lists them; a test checks).
ALERT_FIELDS = ("kind", "severity", "pid", "tid", "comm", "exe", "cgroup_id", "score",
                "bound", "confidence", "sigmas", "model_id", "evidence", "position",
                "syscalls", "context", "unknown_syscalls", "surprises", "attention",
                "suppressed", "latency_s", "time")

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def anomaly_fields(det) -> dict:
    """The alert fields of a pipeline Detection."""
    b, ex, m = det.block, det.explanation, det.model
    unknown = ex.get("unknown", [])
    sigmas = ex.get("sigmas", 0.0)
    high = bool(unknown) or sigmas >= 2 * m.bound.z
    return {
        "kind": "anomaly", "severity": "high" if high else "medium",
        "pid": b.tgid, "tid": b.tid, "comm": b.comm,
        "exe": b.exe or exe_of(b.tgid), "cgroup_id": b.cgroup,
        "score": round(det.score, 6), "bound": round(m.bound.bound, 6),
        "confidence": m.bound.confidence, "sigmas": round(sigmas, 3),
        "model_id": m.model_id,
        "evidence": f"{det.exceedances}/{det.evidence_m}",
        "position": ex["start"], "syscalls": ex["syscalls"], "context": ex.get("context", []),
        "unknown_syscalls": unknown, "surprises": ex["surprises"],
        "attention": ex.get("attention", []), "suppressed": 0,
        "latency_s": round(max(0, time.monotonic_ns() - b.ns) / 1e9, 6),
        "time": round(time.time(), 3),
    }


def message(f: dict) -> str:
    """The one-line human MESSAGE of an alert."""
    s = f["surprises"][0] if f["surprises"] else None
    why = (f"; most surprising {s['observed']} (p={s['observed_p']:.2g}) where "
           f"{s['expected']} was expected") if s else ""
    unk = f"; never-seen syscalls {', '.join(f['unknown_syscalls'])}" \
        if f["unknown_syscalls"] else ""
    sup = f" ({f['suppressed']} similar alerts suppressed)" if f["suppressed"] else ""
    return (f"anomalous syscalls in {f['comm']} pid {f['pid']} ({f['exe'] or 'exe unknown'}): "
            f"score {f['score']:.3f} > bound {f['bound']:.3f}, {f['evidence']} windows"
            f"{why}{unk}{sup}")


class RateLimiter:
    """Per process name, a token bucket of `burst` alerts refilled over `interval` s."""

    def __init__(self, burst: int, interval: float, max_names: int = 4096):
        self.burst, self.interval, self.max_names = burst, interval, max_names
        self.tokens: dict[str, tuple[float, float]] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, name: str, now: float | None = None) -> tuple[bool, int]:
        """(send?, suppressed since the last one sent for this name)."""
        now = time.monotonic() if now is None else now
        tokens, last = self.tokens.get(name, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.burst / self.interval)
        if tokens >= 1:
            self.tokens[name] = (tokens - 1, now)
            return True, self.suppressed.pop(name, 0)
        self.tokens[name] = (tokens, now)
        self.suppressed[name] = self.suppressed.get(name, 0) + 1
        if len(self.tokens) > self.max_names:
            self.tokens.pop(next(iter(self.tokens)))
        return False, 0


def _journal_value(v) -> str:
    """Lists of names space-separated, other structures as JSON, the rest as text."""
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return " ".join(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


class AlertSink:
    """Where alerts and events go: journald (with a stderr fallback) and JSON lines."""

    def __init__(self, journald: bool = True, json_lines: str = "",
                 socket_path: str = JOURNAL_SOCKET, err=sys.stderr):
        self.journald, self.socket_path, self.err = journald, socket_path, err
        self.journald_failures = 0
        self.journald_sent = 0
        self.json_failures = 0
        self._json_path = json_lines
        self._json = None
        self._lock = threading.Lock()
        self._down = False
        self.set_json(json_lines)

    def set_json(self, json_lines: str) -> None:
        with self._lock:
            if self._json not in (None, sys.stdout):
                self._json.close()
            self._json_path = json_lines
            if json_lines == "-":
                self._json = sys.stdout
            elif json_lines:
                self._json = open(json_lines, "a", buffering=1)  # noqa: SIM115 (kept open)
            else:
                self._json = None

    def journald_up(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def emit(self, kind: str, priority: int, msg: str, fields: dict) -> None:
        line = json.dumps({"message": msg, "message_id": MESSAGE_IDS[kind],
                           "priority": priority, **fields}, separators=(",", ":"))
        with self._lock:
            if self._json is not None:
                try:
                    self._json.write(line + "\n")
                    self._json.flush()
                except OSError:
                    self.json_failures += 1
            if not self.journald:
                return
            if self._send_journal(kind, priority, msg, fields):
                if self._down:
                    self._down = False
                    print("sysdream: journald is back; alerts go to it again", file=self.err)
                return
            self.journald_failures += 1
            if not self._down:
                self._down = True
                print("sysdream: journald is not reachable at "
                      f"{self.socket_path}; alerts go to stderr as JSON lines until it "
                      "returns", file=self.err)
            print(line, file=self.err, flush=True)

    def _send_journal(self, kind: str, priority: int, msg: str, fields: dict) -> bool:
        if not self.journald_up():
            return False
        try:
            from systemd import journal
        except ImportError:
            return False
        extra = {f"SYSDREAM_{k.upper()}": _journal_value(v) for k, v in fields.items()}
        try:
            journal.send(msg, MESSAGE_ID=MESSAGE_IDS[kind], PRIORITY=str(priority),
                         SYSLOG_IDENTIFIER="sysdream", **extra)
        except OSError:
            return False
        self.journald_sent += 1
        return True

    def close(self) -> None:
        self.set_json("")
