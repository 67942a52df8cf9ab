"""The alert path: from a pipeline Detection to an alert that went out, or one that was
held back and counted.

Who made the window comes from the process table, the fields and the fingerprint from
`fields.anomaly_fields`; the rate limits (per fingerprint, and a ceiling per minute) decide;
the sinks deliver (daemon/alerting/sinks.py: journald with its fallback, JSON lines, syslog,
webhook). Nothing held back disappears:
it is counted by executable, carried by the next alert of its fingerprint and listed in an
`alerts-suppressed` event every `suppressed_summary_s`. The scorer thread calls
`detected`, the main loop `tick`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..metrics.labels import ExeLabels
from . import deliveries, fields, kinds, ratelimit
from .allow import AllowList

ALLOW_CHECK_S = 1.0


def _sinks_of(cfg) -> tuple:
    """What decides the sinks: [alerts] journald and json_lines, the network sections."""
    v = cfg.values
    return (v["alerts"]["journald"], v["alerts"]["json_lines"],
            sorted(v["alerts.syslog"].items()), sorted(v["alerts.webhook"].items()))


class AlertPath:
    def __init__(self, cfg, processes, labels: ExeLabels, log=print):
        a = cfg.alerts
        self.processes, self.log = processes, log
        self.deliveries = deliveries.Deliveries()
        self.sink = deliveries.build_sinks(cfg, self.deliveries)
        self.limiter = ratelimit.RateLimiter(a.rate_limit_burst, a.rate_limit_interval_s,
                                          a.rate_limit_ceiling_per_minute)
        self.summary_s = a.suppressed_summary_s
        self.sent = labels.counter()           # alerts that went out, by executable
        self.labels = labels
        self.sent_by_severity: dict = {}       # ... and by severity: severity -> counts
        self.suppressed = labels.counter()     # ... and those held back
        self.observe_latency = None            # the metrics' detection-latency histogram
        self.fleet_server = ""                 # an agent's server: "NAME@tcp://HOST:PORT"
        self.allowed = labels.counter()        # ... and those an allow entry matched
        self.allow: AllowList | None = None    # the operator's allow list (load_allow)
        self.allow_errors = 0                  # allow lists that could not be used
        self._next_allow_check = 0.0
        self._next_summary = 0.0
        self._lock = threading.Lock()

    def detected(self, det) -> None:
        """A Detection from the scorer thread: raise its alert, or hold it back."""
        b = det.block
        ns, comm, before_exec = b.who(det.row, det.model.p)
        f = fields.anomaly_fields(det, self.processes.context(b.tgid, ns, before_exec),
                                  comm, self.fleet_server)
        exe = f["exe"] or b.exe
        allow = self.allow
        if allow is not None and allow.match(f) is not None:
            self.allowed.add(exe)
            return
        with self._lock:
            ok, suppressed, incidents = self.limiter.allow(
                f["fingerprint"], about={"exe": f["exe"], "pid": b.tgid,
                                         "lineage_text": f["lineage_text"]})
            if not ok:
                self.suppressed.add(exe, alerted=True)
                return
            f["suppressed"], f["incident_count"] = suppressed, incidents
            prio = kinds.CRIT if f["severity"] == "high" else kinds.WARNING
            self.sink.emit("anomaly", prio, fields.message(f), f)
            self.sent.add(exe, alerted=True)
            sev = self.sent_by_severity.get(f["severity"])
            if sev is None:
                sev = self.sent_by_severity[f["severity"]] = self.labels.counter()
            sev.add(exe, alerted=True)
        if self.observe_latency is not None:
            self.observe_latency(f["latency_s"])

    def tick(self, now: float | None = None) -> None:
        """From the main loop: the summary of what was held back, when it is due."""
        now = time.monotonic() if now is None else now
        if self.allow is not None and now >= self._next_allow_check:
            self._next_allow_check = now + ALLOW_CHECK_S
            self.reload_allow()
        if now >= self._next_summary:
            self._next_summary = now + self.summary_s
            self.summarise()

    def load_allow(self, path: Path) -> None:
        """The allow list (daemon/alerting/allow.py) at start. One that cannot be used
        (unreadable, damaged) means no entries, an `allow-list-refused` event and a count:
        never a reason to stop detecting (whoever can break the file would blind the host);
        later, a bad edit keeps the list in use (reload_allow)."""
        try:
            self.allow = AllowList.load(path)
        except ConfigError as exc:
            self.allow = AllowList([], path)
            self._stamp_bad()
            self._refused(f"allow list refused, detecting with no allow entries: {exc}")
            return
        if self.allow.entries:
            self.log(f"allow list: {len(self.allow.entries)} entries from {path}")

    def _stamp_bad(self) -> None:
        """Remember the refused file, so it is reported once per change, not every second."""
        self.allow.stamp = ()
        try:
            st = self.allow.path.stat()
            self.allow.stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            pass

    def _refused(self, text: str) -> None:
        self.allow_errors += 1
        self.log(text)
        self.sink.emit("allow-list-refused", kinds.ERR, text,
                       {"kind": "allow-list-refused", "path": str(self.allow.path)})

    def reload_allow(self) -> None:
        """Take a changed allow list (the file is stat'ed; read only when it changed)."""
        if not self.allow.changed():
            return
        try:
            new = AllowList.load(self.allow.path)
        except ConfigError as exc:
            self._stamp_bad()
            self._refused(f"allow list refused, the one in use stays: {exc}")
            return
        self.allow = new
        self.log(f"allow list: {len(new.entries)} entries from {new.path}")

    def summarise(self) -> None:
        """One event for the alerts held back since the last one, if any."""
        with self._lock:
            held = self.limiter.take_summary()
        if not held:
            return
        total = sum(h["count"] for h in held)
        top = "; ".join(f"{h['count']} x {h['exe'] or 'exe unknown'} (fingerprint "
                        f"{h['fingerprint']}, last pid {h['pid']})" for h in held[:5])
        text = f"{total} alerts suppressed by the rate limits since the last summary: {top}"
        self.sink.emit("alerts-suppressed", kinds.WARNING, text,
                       {"kind": "alerts-suppressed", "suppressed": total,
                        "fingerprints": held[:50]})

    def apply(self, cfg, old) -> bool:
        """New [alerts] settings (a reload): sinks rebuilt where theirs changed; False
        when they could not be (a JSON-lines file that cannot be opened: the sinks in use
        stay)."""
        ok = True
        if _sinks_of(cfg) != _sinks_of(old):
            try:
                self.sink.swap(deliveries.build_sinks(cfg))
            except ConfigError as exc:
                self.log(f"reload: {exc}; the alert outputs in use stay")
                ok = False
        new = cfg.alerts
        with self._lock:
            self.limiter.burst, self.limiter.interval = new.rate_limit_burst, \
                new.rate_limit_interval_s
            self.limiter.ceiling = new.rate_limit_ceiling_per_minute
        self.summary_s = new.suppressed_summary_s
        return ok

    def stats(self) -> AlertStats:
        """What the metrics read at a scrape: alerts by executable label."""
        return AlertStats(self.sent.snapshot(), self.suppressed.snapshot(),
                          self.allowed.snapshot(),
                          {sev: c.snapshot() for sev, c in self.sent_by_severity.items()},
                          self.allow_errors, self.limiter.evicted)

    def close(self) -> None:
        self.sink.close()


@dataclass(frozen=True)
class AlertStats:
    """A snapshot of the alert path, by executable label: alerts sent, held back by the
    rate limits, and not sent because an allow entry matched them."""
    sent: dict[str, int]
    suppressed: dict[str, int]
    allowed: dict[str, int]
    sent_by_severity: dict[str, dict[str, int]]     # severity -> exe label -> alerts
    allow_errors: int               # allow lists that could not be used
    limiter_evicted: int            # fingerprints dropped while they held alerts back
