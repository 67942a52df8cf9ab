"""The alert path: from a pipeline Detection to an alert that went out, or one that was
held back and counted.

Who made the window comes from the process table, the fields and the fingerprint from
`fields.anomaly_fields`; the rate limits (per fingerprint, and a ceiling per minute) decide;
the sinks deliver (daemon/alerting/sinks.py: journald with its fallback, JSON lines, syslog,
webhook). Nothing held back disappears:
it is counted by executable, carried by the next alert of its fingerprint and listed in an
`alerts-suppressed` event every `suppressed_summary_s`. The scorer thread calls
`detected`, the main loop `news` and `tick`.

Alerts belong to incidents (daemon/alerting/incidents.py): the rate limits act on an
incident's opening and on its rise (in severity, or a high event of a new kind of
evidence), never on its updates, which only count.
A sink takes incidents at `[alerts] min_severity` or above; a low one goes to journald
alone, at notice priority, and to the metrics.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..metrics.labels import ExeLabels
from . import deliveries, fields, incidents, kinds, ratelimit
from .allow import AllowList
from .incidents import Agreement, Incidents, at_least, news_severity, sequence_severity

ALLOW_CHECK_S = 1.0
SUMMARY_FINGERPRINTS = 50   # per alerts-suppressed event


def _sinks_of(cfg) -> tuple:
    """What decides the sinks: [alerts] journald and json_lines, the network sections."""
    v = cfg.values
    return (v["alerts"]["journald"], v["alerts"]["json_lines"],
            sorted(v["alerts.syslog"].items()), sorted(v["alerts.webhook"].items()))


def _session(watch, proc):
    """The incident's lineage root: the Watch's (detect/news.py) where there is one."""
    if proc is None or watch is None:
        return ()
    return watch.session(proc)


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
        self.min_severity = a.min_severity
        self.incidents = Incidents(a.incident_span_s)
        self.agreement = Agreement(a.incident_span_s)
        self.by_severity = {s: 0 for s in incidents.SEVERITIES}    # incident alerts sent
        self.watch = None           # detect/news.py Watch, when acts and profiles are on
        self.behaviour_expected: float | None = None   # held-out news incidents an hour

    def detected(self, det) -> None:
        """A Detection from the scorer thread: its incident opened, raised or updated."""
        b = det.block
        ns, comm, before_exec = b.who(det.row, det.model.p)
        f = fields.anomaly_fields(det, self.processes.context(b.tgid, ns, before_exec),
                                  comm, self.fleet_server)
        exe = f["exe"] or b.exe
        watch, prog, proc = self.watch, None, None
        if watch is not None:
            prog, proc = watch.program_of(b.tgid, ns)
        fields.mark_program(f, prog)
        if self._allowed(f):
            self.allowed.add(exe)
            return
        settled = prog is not None and watch.profiles.settled(prog)
        dangerous = f["severity"] == "high" and bool({"memfd", "deleted"} &
                                                     set(f["exe_flags"]))
        key = (prog.key if prog is not None else exe,
               _session(watch, proc), f["fingerprint"])
        with self._lock:
            inc = self.incidents.open.get(key)
            # sustained: twice the bound, a syscall training never saw, or an excursion
            # that went on for a whole evidence span (m windows' alerts in its incident):
            # a busy program's occasional excursions just over its bound stay low
            sustained = det.exceedances >= 2 * max(det.needed, 1.0) or \
                bool(f["unknown_syscalls"]) or \
                (inc is not None and inc.count >= max(det.evidence_m, 1))
            lineage = [q.key for q in self.processes.lineage(proc)] if proc else []
            agree = self.agreement.add(proc.key if proc else (b.tgid, 0), lineage,
                                       "sequence", time.monotonic())
            # without acts the sequence model's own severities stand (medium, high)
            sev = f["severity"] if watch is None else \
                sequence_severity(settled, sustained, dangerous, agree)
            a = det.model.alert
            expected = a.expected_per_hour() if a is not None else None
            self._incident(key, "anomaly", sev, f, exe, f"sequence {f['evidence']}",
                           agree, expected)
        if self.observe_latency is not None:
            self.observe_latency(f["latency_s"])

    def news(self, items) -> None:
        """Behaviour news from the main loop (detect/news.py): its incidents."""
        watch = self.watch
        for n in items:
            ctx = self.processes.context(n.pid, n.ns)
            f = fields.behaviour_fields(n, ctx, self.fleet_server)
            if self._allowed(f):
                self.allowed.add(n.program.label)
                watch.learn(n)
                continue
            now = time.monotonic()
            with self._lock:
                agree = self.agreement.add(n.process, n.lineage, n.kind, now) \
                    if n.settled or n.dangerous else {n.kind}
                sev = news_severity(n.settled, n.dangerous, agree)
                key = (n.program.key, n.session, f["fingerprint"])
                # news of an unsettled profile was learnt quietly by the Watch; news at
                # medium or above is never learnt here (only `sysdream allow` or a
                # retraining that keeps it)
                self._incident(key, "behaviour", sev, f, n.program.label, n.feature, agree,
                               self.behaviour_expected if sev != "low" else None)

    def _allowed(self, f: dict) -> bool:
        """An allow entry matches; a program run from outside the initial mount namespace
        takes no entry by path (a bind mount there can put anything at any path)."""
        e = self.allow.match(f) if self.allow is not None else None
        return e is not None and not (e.kind == "exe" and f.get("foreign_mount"))

    def _incident(self, key, kind: str, sev: str, f: dict, exe: str, evidence: str,
                  agree: set, expected) -> None:
        """Under the lock: the event into its incident; an alert when it opens or rises."""
        inc, state, pushed = self.incidents.add(key, f["fingerprint"], kind, sev, exe,
                                                evidence, agree, expected)
        for old in pushed:
            self._close(old)
        if state == "update":
            return
        f.update(inc.fields())
        f["incident_state"] = state
        ok, suppressed, count = self.limiter.allow(
            f["fingerprint"], about={"exe": f["exe"], "pid": f["pid"],
                                     "lineage_text": f["lineage_text"],
                                     "severity": inc.severity},
            high=inc.severity == "high", first=f)
        if not ok:
            self.suppressed.add(exe, alerted=True)
            return
        f["suppressed"] = suppressed
        self._emit(kind, inc.severity, fields.message(f), f)
        self.by_severity[inc.severity] += 1
        self.sent.add(exe, alerted=True)
        sev = self.sent_by_severity.get(inc.severity)
        if sev is None:
            sev = self.sent_by_severity[inc.severity] = self.labels.counter()
        sev.add(exe, alerted=True)

    def _emit(self, kind: str, sev: str, text: str, f: dict) -> None:
        if at_least(sev, self.min_severity):
            self.sink.emit(kind, kinds.CRIT if sev == "high" else kinds.WARNING, text, f)
        else:   # low: journald (and its fallback) only, at notice priority
            self.sink.emit(kind, kinds.NOTICE, text, f, only=("journald",))

    def _close(self, inc) -> None:
        f = {"kind": "incident-closed", "incident_kind": inc.kind, "program": inc.program,
             "fingerprint": inc.fingerprint, **inc.fields()}
        text = (f"incident {inc.id} closed: {inc.severity} {inc.kind} of {inc.program}, "
                f"{inc.count} events, evidence: {'; '.join(inc.evidence[:5])}")
        self._emit("incident-closed", inc.severity, text, f)

    def tick(self, now: float | None = None) -> None:
        """From the main loop: the summary of what was held back, when it is due."""
        now = time.monotonic() if now is None else now
        if self.allow is not None and now >= self._next_allow_check:
            self._next_allow_check = now + ALLOW_CHECK_S
            self.reload_allow()
        with self._lock:
            for inc in self.incidents.expire(now):
                self._close(inc)
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
        # what is allowed changed: open incidents close, so that a pattern no longer
        # allowed alerts at its next event instead of updating an incident it never had
        with self._lock:
            for inc in self.incidents.close_all():
                self._close(inc)
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
        # every fingerprint held back, with the first alert of each whole, in events of
        # SUMMARY_FINGERPRINTS: none drops out of the summary (issue 33 #8)
        for i in range(0, len(held), SUMMARY_FINGERPRINTS):
            self.sink.emit("alerts-suppressed", kinds.WARNING, text,
                           {"kind": "alerts-suppressed", "suppressed": total,
                            "fingerprints": held[i:i + SUMMARY_FINGERPRINTS]})

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
        self.min_severity = new.min_severity
        return ok

    def stats(self) -> AlertStats:
        """What the metrics read at a scrape: alerts by executable label."""
        return AlertStats(self.sent.snapshot(), self.suppressed.snapshot(),
                          self.allowed.snapshot(),
                          {sev: c.snapshot() for sev, c in self.sent_by_severity.items()},
                          self.allow_errors, self.limiter.evicted,
                          dict(self.incidents.opened), dict(self.by_severity),
                          len(self.incidents.open))

    def close(self) -> None:
        with self._lock:
            for inc in self.incidents.close_all():
                self._close(inc)
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
    incidents_opened: dict[str, int]    # by severity
    incident_alerts: dict[str, int]     # alerts sent for incidents (open or rise), by severity
    incidents_open: int
