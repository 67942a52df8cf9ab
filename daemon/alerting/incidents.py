"""Incidents: what a team acts on, instead of a stream of alerts.

One incident per program, lineage root (session) and fingerprint within `span_s`: the
first event opens it (an alert goes out), later ones update it (count, last seen, new
evidence; an update goes out only when its severity rises, or when a high event brings
a kind of evidence the incident did not have), and a close is sent once
`span_s` passes without one. Each incident has an id.

Severity comes from independent evidence (issue 32):

    low     a sequence excursion alone, or news in an unsettled profile
    medium  news in a settled profile, or a sustained sequence excursion in a settled
            program (evidence twice the bound, a syscall training never saw, or m
            windows' alerts in the incident: alerting/path.py)
    high    two kinds agreeing in one process or its descendants within the span (news
            and sequence, or two kinds of news), or always-dangerous news (a module load,
            a fileless exec, ptrace of a process not its child, a downloaded file run,
            a first read of the password hashes: detect/news.py) in any program

"Agreeing": the evidence of a process is recorded at it and at its ancestors up to
AGREE_DEPTH, so a web application's new child and that child's outbound connection agree
in the application's subtree; a sequence excursion agrees only with news of its own
process. Only news of a settled profile takes part (news of an unsettled one does not),
so an administrator's shell, never settled, never reaches high by doing new things.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field

SEVERITIES = ("low", "medium", "high")
RANK = {s: i for i, s in enumerate(SEVERITIES)}
AGREE_DEPTH = 2             # the process, its parent and grandparent: whose subtree agrees
SPAN_S = 300.0              # [alerts] incident_span_s
MAX_INCIDENTS = 4096
MAX_EVIDENCE = 32           # distinct evidence lines an incident keeps


def at_least(severity: str, minimum: str) -> bool:
    return RANK[severity] >= RANK[minimum]


@dataclass
class Incident:
    id: str
    key: tuple
    fingerprint: str
    kind: str               # what opened it: "anomaly" (sequence) or "behaviour" (news)
    severity: str
    program: str
    first: float            # wall time
    last: float
    last_mono: float
    count: int = 1
    kinds: set = field(default_factory=set)
    evidence: list = field(default_factory=list)
    expected_per_hour: float | None = None

    def fields(self) -> dict:
        return {"incident_id": self.id, "incident_count": self.count,
                "severity": self.severity, "evidence_kinds": sorted(self.kinds),
                "incident_first": round(self.first, 3), "incident_last": round(self.last, 3),
                "incident_evidence": list(self.evidence),
                "expected_false_per_hour": self.expected_per_hour}


class Agreement:
    """Medium-grade evidence by process subtree within a span: which kinds agree."""

    def __init__(self, span_s: float = SPAN_S, max_keys: int = 65536):
        self.span, self.max = span_s, max_keys
        self.recent: OrderedDict[tuple, deque] = OrderedDict()

    def add(self, process: tuple, lineage: list, kind: str, now: float) -> set[str]:
        """Record `kind` for `process` (ancestors' keys `lineage`, nearest first); the
        kinds agreeing with it (itself included): news of the subtree of the process or
        of one of its ancestors up to AGREE_DEPTH, and a sequence excursion of the same
        process only (sequence excursions are common in a busy subtree: a low one there
        must not turn every news of its parent high)."""
        agree = {kind}
        for key in [process, *lineage[:AGREE_DEPTH]]:
            if not key:
                continue
            d = self.recent.get(key)
            if d is None:
                d = self.recent[key] = deque(maxlen=64)
                while len(self.recent) > self.max:
                    self.recent.popitem(last=False)
            else:
                self.recent.move_to_end(key)
            while d and d[0][0] < now - self.span:
                d.popleft()
            for _, k, origin in d:
                if origin == process or (k != "sequence" and kind != "sequence"):
                    agree.add(k)
            d.append((now, kind, process))
        return agree


class Incidents:
    """Open incidents by (program, session, fingerprint)."""

    def __init__(self, span_s: float = SPAN_S, max_incidents: int = MAX_INCIDENTS):
        self.span, self.max = span_s, max_incidents
        self.open: OrderedDict[tuple, Incident] = OrderedDict()
        self.opened = {s: 0 for s in SEVERITIES}
        self.closed = 0
        self.events = 0

    def add(self, key: tuple, fingerprint: str, kind: str, severity: str, program: str,
            evidence: str, kinds: set, expected: float | None = None,
            now: float | None = None, wall: float | None = None
            ) -> tuple[Incident, str, list[Incident]]:
        """One event: (its incident, "open" | "raise" | "update", incidents closed
        because the table was full). "raise": the severity went up, or a high event
        brought a new kind of evidence (worth an alert)."""
        now = time.monotonic() if now is None else now
        wall = time.time() if wall is None else wall
        self.events += 1
        inc = self.open.get(key)
        if inc is not None and now - inc.last_mono > self.span:
            inc = None          # expired but not swept yet: a new one (the sweep closes it)
        pushed: list[Incident] = []
        if inc is None:
            old = self.open.pop(key, None)
            if old is not None:
                pushed.append(old)
            inc = Incident(str(uuid.uuid4()), key, fingerprint, kind, severity, program,
                           wall, wall, now, kinds=set(kinds), evidence=[evidence],
                           expected_per_hour=expected)
            self.open[key] = inc
            self.opened[severity] += 1
            while len(self.open) > self.max:
                pushed.append(self.open.popitem(last=False)[1])
            self.closed += len(pushed)
            return inc, "open", pushed
        self.open.move_to_end(key)
        inc.count += 1
        inc.last, inc.last_mono = wall, now
        fresh = set(kinds) - inc.kinds
        inc.kinds |= kinds
        if evidence not in inc.evidence and len(inc.evidence) < MAX_EVIDENCE:
            inc.evidence.append(evidence)
        if RANK[severity] > RANK[inc.severity]:
            inc.severity = severity
            if expected is not None:
                inc.expected_per_hour = expected
            return inc, "raise", pushed
        if severity == "high" and fresh:
            # a high event of a kind the incident did not have (a web application's
            # first read of /etc/shadow after the exec and file news that made its
            # incident high): news an analyst must see, not a count in the close
            return inc, "raise", pushed
        return inc, "update", pushed

    def expire(self, now: float | None = None) -> list[Incident]:
        """The incidents `span_s` has passed over: closed, for the close to be sent."""
        now = time.monotonic() if now is None else now
        out = [inc for inc in self.open.values() if now - inc.last_mono > self.span]
        for inc in out:
            del self.open[inc.key]
        self.closed += len(out)
        return out

    def close_all(self) -> list[Incident]:
        out = list(self.open.values())
        self.open.clear()
        self.closed += len(out)
        return out


def news_severity(settled: bool, dangerous: str, agreeing: set[str]) -> str:
    if dangerous or len(agreeing) >= 2:
        return "high"
    return "medium" if settled else "low"


def sequence_severity(settled: bool, sustained: bool, dangerous: bool,
                      agreeing: set[str]) -> str:
    if dangerous or len(agreeing) >= 2:
        return "high"
    return "medium" if settled and sustained else "low"
