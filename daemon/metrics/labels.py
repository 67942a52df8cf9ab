"""Bounded label values for metrics keyed by executable.

An executable path is chosen by whoever runs a program (a memfd can be named anything), so
a label per executable must be bounded, and the bound must not be spent by junk: a
process that raised an alert takes a label from one that never did. Label values are
assigned when a count is added and kept while they last, so every series only grows; an
executable that loses its label has its series removed (Prometheus marks it stale) and
counts under "other" from then on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict

OTHER = "other"


class ExeLabels:
    def __init__(self, limit: int):
        self.limit = limit
        self.assigned: OrderedDict[str, bool] = OrderedDict()   # exe -> has alerted
        self.families: list[LabelledCounts] = []
        self.evictions = 0
        self._lock = threading.Lock()

    def counter(self) -> LabelledCounts:
        c = LabelledCounts(self)
        self.families.append(c)
        return c

    def _label(self, exe: str, alerted: bool) -> str:
        if exe in self.assigned:
            if alerted:
                self.assigned[exe] = True
            return exe
        if len(self.assigned) < self.limit:
            self.assigned[exe] = alerted
            return exe
        if alerted:
            victim = next((k for k, a in self.assigned.items() if not a), None)
            if victim is not None:
                del self.assigned[victim]
                for f in self.families:
                    f.values.pop(victim, None)
                self.evictions += 1
                self.assigned[exe] = True
                return exe
        return OTHER

    def add(self, counts: LabelledCounts, exe: str, n: int, alerted: bool) -> None:
        with self._lock:
            counts.values[self._label(exe or "unknown", alerted)] += n

    def snapshot(self, counts: LabelledCounts) -> dict[str, int]:
        with self._lock:
            return dict(counts.values)


class LabelledCounts:
    """Counts by executable label, sharing one ExeLabels budget with its siblings."""

    def __init__(self, labels: ExeLabels):
        self.labels = labels
        self.values: defaultdict[str, int] = defaultdict(int)

    def add(self, exe: str, n: int = 1, alerted: bool = False) -> None:
        self.labels.add(self, exe, n, alerted)

    def snapshot(self) -> dict[str, int]:
        return self.labels.snapshot(self)

    def total(self) -> int:
        return sum(self.snapshot().values())
