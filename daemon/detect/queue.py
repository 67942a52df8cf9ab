"""The bounded window queue between the reader and the scorer, and the pipeline's counters.

Shedding: the queue holds at most `queue_windows` windows. When a new block would
overflow it, the process with the most windows waiting loses its oldest waiting windows
first (a flood from one process cannot push out the windows of the others); every shed
window is counted (`sysdream_windows_shed_total`). Windows queued under a model with
another window geometry are shed at the swap (reason "model_change"), and what a stop's
drain leaves unscored at the stop (reason "shutdown").
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from ..metrics.labels import ExeLabels, LabelledCounts
from .block import Block


@dataclass
class Counters:
    """Pipeline counters, read by the metrics collector (plain ints, written by one thread
    each)."""
    records: int = 0
    syscalls: int = 0
    windows_cut: int = 0
    windows_scored: int = 0
    windows_cached: int = 0
    windows_shed: dict = field(default_factory=lambda: defaultdict(int))
    threads_evicted: int = 0
    threads_exited: int = 0
    record_gaps: int = 0
    records_refused: int = 0      # records claiming more syscalls than a chunk holds
    batches: int = 0
    labels: ExeLabels = field(default_factory=lambda: ExeLabels(64))
    anomalous: LabelledCounts = None       # windows above the bound, by executable
    set_aside: dict = field(default_factory=lambda: defaultdict(int))
    # state dropped to stay bounded while it still held something: evidence, episodes,
    # lineage_events (docs/metrics.md, sysdream_state_evictions_total)
    evictions: dict = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self):
        if self.anomalous is None:
            self.anomalous = self.labels.counter()

    def stats(self) -> CounterStats:
        """What the metrics read at a scrape: plain numbers, copied."""
        return CounterStats(self.windows_cut, self.windows_scored, self.windows_cached,
                            dict(self.windows_shed), self.threads_evicted,
                            self.records_refused, self.record_gaps,
                            self.anomalous.snapshot(), dict(self.set_aside),
                            dict(self.evictions))


@dataclass(frozen=True)
class CounterStats:
    """A snapshot of the pipeline's counters (windows shed and set aside by reason,
    anomalous windows by executable label)."""
    windows_cut: int
    windows_scored: int
    windows_cached: int
    windows_shed: dict[str, int]
    threads_evicted: int
    records_refused: int
    record_gaps: int
    anomalous: dict[str, int]
    set_aside: dict[str, int]
    evictions: dict[str, int]   # evidence, episodes, lineage_events dropped while full


class WindowQueue:
    """Bounded, per-process fair queue of window blocks (see the module's shedding note)."""

    def __init__(self, capacity: int, counters: Counters):
        self.capacity, self.counters = capacity, counters
        self.by_proc: dict[int, deque[Block]] = {}
        self.waiting: dict[int, int] = defaultdict(int)
        self.size = 0
        self.cond = threading.Condition()

    def put(self, block: Block) -> None:
        with self.cond:
            self.by_proc.setdefault(block.tgid, deque()).append(block)
            self.waiting[block.tgid] += len(block)
            self.size += len(block)
            while self.size > self.capacity:
                self._shed_one(self.size - self.capacity)
            self.cond.notify()

    def _shed_one(self, excess: int) -> None:
        tgid = max(self.waiting, key=self.waiting.__getitem__)
        q = self.by_proc[tgid]
        head = q[0]
        n = min(excess, len(head))
        head.drop_front(n)
        if not len(head):
            q.popleft()
        self._account(tgid, n)
        self.counters.windows_shed["queue_full"] += n

    def _account(self, tgid: int, n: int) -> None:
        self.size -= n
        self.waiting[tgid] -= n
        if self.waiting[tgid] <= 0:
            del self.waiting[tgid]
            self.by_proc.pop(tgid, None)

    def take(self, limit: int, wait: float, fill_wait: float = 0.0) -> list[Block]:
        """Up to `limit` windows, round-robin over processes; waits up to `wait` for the
        first and then up to `fill_wait` for the batch to fill."""
        with self.cond:
            if not self.size:
                self.cond.wait(wait)
            if self.size and self.size < limit and fill_wait > 0:
                deadline = time.monotonic() + fill_wait
                while self.size < limit and (left := deadline - time.monotonic()) > 0:
                    self.cond.wait(left)
            out: list[Block] = []
            taken = 0
            while self.size and taken < limit:
                procs = list(self.by_proc)
                share = max(1, (limit - taken) // len(procs))  # an equal share each
                for tgid in procs:
                    if taken >= limit:
                        break
                    q = self.by_proc[tgid]
                    head = q[0]
                    n = min(len(head), limit - taken, share)
                    if n == len(head):
                        q.popleft()
                        out.append(head)
                    else:
                        out.append(head.split(n))
                    self._account(tgid, n)
                    taken += n
            return out

    def clear(self, reason: str) -> int:
        with self.cond:
            n = self.size
            self.by_proc.clear()
            self.waiting.clear()
            self.size = 0
            if n:
                self.counters.windows_shed[reason] += n
            return n
