"""status.json in the state directory: what `sysdream status` shows of the running daemon.

Written every `[service] status_interval_s` (with sd_notify's STATUS=), at start and at the
stop, by rename so a reader never sees half of it. A sink is healthy when nothing it was
handed since the previous write failed or was dropped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

NAME = "status.json"
RESULTS = ("sent", "failed", "dropped", "retried")


def write_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


class StatusFile:
    def __init__(self, state_dir: Path, interval_s: float):
        self.path = Path(state_dir) / NAME
        self.interval_s = interval_s
        self._last: dict[str, dict] = {}
        self.errors = 0

    def sinks(self, sinks) -> dict:
        out = {}
        for s in sinks:
            counts = {r: int(s.counts[r]) for r in RESULTS}
            before = self._last.get(s.name, dict.fromkeys(RESULTS, 0))
            bad = counts["failed"] + counts["dropped"] - before["failed"] - before["dropped"]
            out[s.name] = {**counts, "pending": int(s.pending()), "healthy": bad <= 0}
            self._last[s.name] = counts
        return out

    def write(self, svc, phase: str | None = None) -> None:
        """The service's state now; `phase` overrides its own ("stopped" at the end)."""
        from ..version import version

        model = svc.model
        alerting = svc.alerting
        k = svc.kernel_counters
        now = time.time()
        doc = {
            "pid": os.getpid(), "version": version(), "updated": round(now, 3),
            "interval_s": self.interval_s, "phase": phase or svc.phase,
            "status": svc.status_line(),
            "model_id": model.model_id if model is not None else "",
            "model_path": str(svc.cfg.model_path()),
            "learning_progress": round(float(svc.learner.progress), 4),
            "syscalls_read": int(svc.syscalls_read),
            "syscalls_lost": int(k.get("lost_syscalls", 0) + k.get("lost_nostorage", 0)),
            "alerts": {sev: c.total() for sev, c in sorted(alerting.sent_by_severity.items())},
            "alerts_total": alerting.sent.total(),
            "sinks": self.sinks(alerting.sink.sinks),
        }
        try:
            write_atomic(self.path, doc)
        except OSError:
            self.errors += 1        # the state directory's own errors are counted elsewhere


def read(state_dir: Path) -> dict:
    """The status a daemon wrote, with `running` (its pid alive and the file fresh) and
    `age_s`; ValueError naming the fix when there is none."""
    path = Path(state_dir) / NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no status: the daemon is not running with this state "
                         "directory (systemctl status sysdream; or give --config or "
                         "--state-dir)") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied: run as root (the state directory "
                         "is the daemon's, mode 0700)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable status: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a status object")
    age = time.time() - float(doc.get("updated", 0))
    alive = _alive(int(doc.get("pid", 0)))
    stale = age > 3 * float(doc.get("interval_s", 10)) + 5
    doc["age_s"] = round(age, 1)
    doc["running"] = alive and not stale and doc.get("phase") != "stopped"
    return doc


def _alive(pid: int) -> bool:
    return pid > 0 and os.path.exists(f"/proc/{pid}")
