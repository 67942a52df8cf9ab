"""The online pipeline: chunk records -> per-thread streams -> windows -> known-window cache
-> bounded queue -> batched inference -> confidence bound -> per-process evidence -> alert.

Two threads share it. The reader (the service's main loop) calls `ingest()` with whatever
the ring buffer held; it only appends to thread buffers, cuts windows and queues them, and
never waits for anything downstream. The scorer (`Scorer`, its own thread) takes batches
from the queue, scores the windows the cache does not know, applies the bound and the
evidence rule and hands alerts to a callback.

Shedding: the queue holds at most `queue_windows` windows. When a new block would
overflow it, the process with the most windows waiting loses its oldest waiting windows
first (a flood from one process cannot push out the windows of the others); every shed
window is counted (`sysdream_windows_shed_total`). Windows queued under a model with
another window geometry are shed at the swap (reason "model_change"), and what a stop's
drain leaves unscored at the stop (reason "shutdown").
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field, replace

import numpy as np

from sysdream.model.vocab import UNK
from sysdream.model.windows import Geometry, condition_name
from sysdream.probes import syscalls
from sysdream.probes.layout import REC_EXEC, REC_EXIT
from sysdream.probes.streams import flatten

from .evidence import GRADED_MAX, AlertBound, Episodes, Evidence, graded
from .labels import ExeLabels, LabelledCounts
from .lineage import program
from .lineage import weight as lineage_weight
from .printable import printable

PAD_NUMBER = 65536  # a span position before the thread's first syscall
STOP_JOIN_S = 30.0   # how long a stop waits for the scorer's cycle in progress
DEFAULT_EVIDENCE = 3.0  # the evidence that alerts under a model with no alert bound
# ... where one window weighs at most this: two odd windows alert, one alone never does (a
# thread's odd exit, a rare start-up: with one window at 8, bench/daemon.py's 10,000-thread
# phase raised 18,195 false alerts); a lineage novelty still weighs what it is worth
FALLBACK_WINDOW_MAX = DEFAULT_EVIDENCE / 2
EXEC_WAIT_NS = 2_000_000_000   # how long a thread asks the table for its exec's image
EXEC_SLACK_NS = 100_000   # an exec's context record: stamped at most this long before
#                           the first_ns of its exec record (an empty one, sent after it)
# How long after one of our own deliveries the alert taker's (journald's) windows may be
# its handling of it, and the syscalls such handling never makes (docs/architecture.md).
DELIVERY_SLACK_S = 1.0
NEVER_FOR_DELIVERY = ("execve", "execveat", "fork", "vfork", "clone", "clone3", "ptrace",
                      "setuid", "setreuid", "setresuid", "setgid", "setregid", "setresgid",
                      "setfsuid", "setfsgid", "capset", "init_module", "finit_module",
                      "delete_module", "mount", "umount2", "pivot_root", "chroot",
                      "memfd_create", "process_vm_writev", "bpf", "kexec_load",
                      "kexec_file_load", "socket", "connect", "bind", "listen", "accept",
                      "accept4", "unlink", "unlinkat", "rename", "renameat", "renameat2",
                      "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "symlink",
                      "symlinkat", "link", "linkat", "mprotect", "personality", "prctl")


class ModelView:
    """What the pipeline needs of a Detector, derived once per model: window geometry,
    the syscall-number -> token table and the bound at the configured confidence."""

    def __init__(self, detector, confidence: float = 0.0, arch: str | None = None,
                 lineage: bool = True):
        from sysdream.model.vocab import PAD

        self.det = detector
        cfg = detector.cfg
        self.geom = Geometry.of(cfg)     # model/windows.py owns the arithmetic
        self.p, self.s, self.task = cfg.window, cfg.stride, cfg.task
        self.lead, self.span = self.geom.lead, self.geom.span
        self.arch = arch or syscalls.native_arch()
        names = syscalls.names(np.arange(65536), self.arch)
        self.table = np.append(detector.vocab.encode(names), PAD).astype(np.int64)
        self.bound = detector.bound.with_confidence(confidence) if confidence \
            else detector.bound
        self.model_id = detector.model_id
        self.never_for_delivery = syscalls.known_numbers(NEVER_FOR_DELIVERY, self.arch)
        # the lineage profile learnt beside the model (daemon/lineage.py); None for a
        # model trained on datasets, which carry no process context
        self.alpha = (1 - self.bound.confidence) / 2      # the bound's upper tail
        # the alert bound (daemon/evidence.py), fitted by `sysdream train` on a host's
        # held-out baseline; the configured confidence is the alert bound's where there
        # is one (the statistic that raises an alert), the window bound's where not
        self.alert = None
        if detector.alerting is not None:
            self.alert = AlertBound.from_json(detector.alerting)
            self.bound = detector.bound
            self.alpha = (1 - self.bound.confidence) / 2
            if confidence:
                self.alert = self.alert.with_confidence(confidence)
        # a model conditioned on the program (model/windows.condition): each block's
        # program token heads its windows' context
        self.conditioned = bool(cfg.condition)
        self._conds: dict[str, int] = {}
        self.lineage = None
        if detector.lineage is not None and lineage:
            from .lineage import Judge, Profile
            self.lineage = Judge(Profile.from_json(detector.lineage), self.arch, self.alpha)

    def geometry(self) -> tuple[int, int, str]:
        return self.p, self.s, self.task

    def tokens(self, spans: np.ndarray, blocks: list[Block], rows: np.ndarray) -> np.ndarray:
        """Token ids of spans [N, span] of syscall numbers; `rows`: the block of each. A
        conditioned model reads the block's program at the head of the context."""
        out = self.table[spans]
        if self.conditioned and len(out):
            ids = np.array([self.condition_id(b) for b in blocks], np.int64)
            out[:, 0] = out[:, self.p] = ids[rows]
        return out

    def condition_id(self, b: Block) -> int:
        label = condition_name(b.label or (program(b.exe) if b.exe else ""))
        got = self._conds.get(label)
        if got is None:
            got = self._conds[label] = self.det.condition_id(label)
        return got

    def evidence_bound(self, configured: float = 0) -> float:
        """What a process's evidence must reach to alert, for a program without a bound
        of its own: `configured` where set (in windows at the window bound), else the
        alert bound, else DEFAULT_EVIDENCE."""
        if configured:
            return float(configured)
        return self.alert.bound if self.alert is not None else DEFAULT_EVIDENCE

    def window_max(self, configured: float = 0) -> float:
        """What one window may weigh: less than DEFAULT_EVIDENCE where that is the rule."""
        if configured or self.alert is not None:
            return GRADED_MAX
        return FALLBACK_WINDOW_MAX

    def program_bounds(self, configured: float = 0) -> dict[str, float]:
        """The programs with an alert bound of their own (none where `configured`)."""
        return {} if configured or self.alert is None else self.alert.bounds()

    def names(self, span: np.ndarray) -> np.ndarray:
        out = syscalls.names(np.minimum(span, 65535), self.arch).copy()
        out[span == PAD_NUMBER] = "<pad>"
        return out


@dataclass(kw_only=True)
class Block:
    """Consecutive windows of one thread, waiting for inference."""
    tid: int
    tgid: int
    comm: str
    cgroup: int
    spans: np.ndarray     # [k, lead + p] syscall numbers (PAD_NUMBER before the start)
    valid: np.ndarray     # [k] real syscalls in each target
    starts: np.ndarray    # [k] position of each target in the thread's stream
    ns: int               # kernel time (CLOCK_MONOTONIC ns) of the newest syscall in it
    exe: str = ""         # the process's executable (process table), "" when not known yet
    first_ns: int = 0     # kernel time of the oldest record the block's syscalls came in
    delivery_peer: bool = False   # made by the program that takes our alerts (journald)
    parent: tuple = ()    # the process's parent key (ppid, start ns), () when not known
    key: tuple = ()       # the process's own key (tgid, start ns): a reused pid is another
    exec_at: int = -1     # stream position after the thread's last exec, -1 if none seen:
    exec_ns: int = 0      # a window ending before it was made by the program before,
    comm_before: str = ""  # under this name, at exec_ns (see `who`)
    exe_before: str = ""   # ... running this executable
    final: bool = False    # emitted as the thread exited
    marks: tuple = ()      # (stream position after an exec, the executable before it), old
    #                        to new: which program made each syscall (lineage novelty)
    unsure_from: int = -1  # from here on the program is not known yet (-1: it is)
    label: str = ""        # the program as its alert bound knows it (executable, and an
    #                        interpreter's script: processes.program_label)

    def who(self, row: int, p: int) -> tuple[int, str, bool]:
        """(kernel time, name, before an exec) that say who made window `row`: for a
        window that ended before the thread's last exec, the program that ran before it
        (the process table's image before the one current at the exec), else the one at
        the block's newest syscall."""
        if self.exec_at >= 0 and int(self.starts[row]) + p <= self.exec_at:
            return self.exec_ns, self.comm_before or self.comm, True
        return self.ns, self.comm, False

    def __len__(self) -> int:
        return len(self.starts)

    def drop_front(self, n: int) -> None:
        self.spans, self.valid, self.starts = self.spans[n:], self.valid[n:], self.starts[n:]

    def split(self, n: int) -> Block:
        """The first n windows as a block of their own (every other field kept; not the
        thread's final block: the rest is), which this block then no longer holds."""
        head = replace(self, spans=self.spans[:n], valid=self.valid[:n],
                       starts=self.starts[:n], final=False)
        self.drop_front(n)
        return head


class _Thread:
    __slots__ = ("tid", "tgid", "comm", "cgroup", "buf", "base", "n", "next_start",
                 "last_seq", "covered", "exe", "peer", "first_ns", "parent", "key", "exec_at",
                 "exec_ns", "comm_before", "exe_before", "held", "exec_seen", "marks",
                 "pending", "label")

    def __init__(self, tid: int, tgid: int, comm: str, cgroup: int, first_seq: int, lead: int,
                 exe: str):
        self.tid, self.tgid, self.comm, self.cgroup = tid, tgid, comm, cgroup
        self.buf = np.empty(0, np.int32)
        self.base = 0           # stream position of buf[0]
        self.n = 0              # syscalls seen of this thread
        # A thread first met mid-stream (evicted, or records lost) has no context yet:
        # its first window waits until `lead` syscalls of real context have arrived.
        self.next_start = 0 if first_seq == 0 else lead
        self.last_seq = first_seq - 1
        self.covered = 0        # end of the last target emitted
        self.exe = exe
        self.label = ""         # the program, for its alert bound (processes.program_label)
        self.peer = False       # the program that takes our alerts (see Block)
        self.first_ns = 0       # oldest record time of the current ingest
        self.parent = ()        # the parent's key, for episodes (see Episodes)
        self.key = (tgid, 0)    # the process's key, for its evidence
        self.exec_at = -1       # stream position just after its last exec (-1: none seen)
        self.exec_ns = 0        # ... the kernel time of that exec
        self.comm_before = ""   # ... and the name it had before
        self.exe_before = ""    # ... and the executable it ran before
        self.held = None        # while its exit is read: the blocks it makes, held so
        #                         that the last of them alone is marked final
        self.exec_seen = -1     # first_ns of an exec record whose context is not in the
        #                         process table yet (-1: none waiting)
        self.marks: list = []   # (position after an exec, executable before it)
        self.pending: list = []  # (position after an exec, its kernel time): not resolved


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

    def __post_init__(self):
        if self.anomalous is None:
            self.anomalous = self.labels.counter()


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


class Cutter:
    """The reader's side: thread table (bounded LRU, freed on exit) and window cutting."""

    def __init__(self, model: ModelView, queue: WindowQueue, counters: Counters,
                 max_threads: int, processes=None):
        self.model, self.queue, self.counters = model, queue, counters
        self.max_threads = max_threads
        self.processes = processes      # daemon.processes.ProcessTable, or None
        self.threads: OrderedDict[int, _Thread] = OrderedDict()

    def _refresh_exe(self, t: _Thread, tgid: int) -> None:
        """The thread's executable from the process table. The kernel sends an exec's
        context record before the exec's chunk record, but the reader may take the chunk
        ring's record in a pass that read the context ring just before it came: then the
        table still holds the program before, and the thread asks again on its next
        records, until the table has an image as new as the exec."""
        if self.processes is None:
            return
        exe, since = self.processes.newest_image(tgid)
        t.exe = exe or t.exe
        t.label = self.processes.label(tgid) or t.label
        if t.exec_seen >= 0 and since >= 0 and since >= t.exec_seen - EXEC_SLACK_NS:
            self._resolve(t, [self.processes.exe_before_exec(tgid, ns) or t.exe_before
                              for _, ns in t.pending])
            t.exe_before = t.marks[-1][1] if t.marks else t.exe_before
            t.exec_seen = -1

    def _resolve(self, t: _Thread, before: list[str]) -> None:
        """The pending execs, with the executables that ran before each; marks older than
        any window still to come are dropped."""
        keep = t.n - self.model.span
        t.marks = [m for m in t.marks if m[0] > keep] + \
            [(pos, exe) for (pos, _), exe in zip(t.pending, before, strict=True)]
        t.pending = []

    def _exe(self, tgid: int) -> str:
        """The executable the process table knows for `tgid` (no /proc read here: the
        reader must not wait on the file system)."""
        if self.processes is None:
            return ""
        return self.processes.known_exe(tgid)

    def set_model(self, model: ModelView) -> None:
        """Swap the model. Same geometry: streams and queued windows carry over. Other
        geometry: positions restart (context is kept) and queued windows are shed."""
        old, self.model = self.model, model
        if old.geometry() != model.geometry():
            self.queue.clear("model_change")
            for t in self.threads.values():
                t.next_start = max(t.n, model.lead)
                t.covered = t.next_start

    def ingest(self, records: np.ndarray) -> None:
        if records.size == 0:
            return
        c = self.counters
        over = records["count"] > records.dtype["ids"].shape[0]
        if over.any():   # no kernel sends these: refused and counted, never trusted
            c.records_refused += int(over.sum())
            records = records[~over]
        c.records += records.size
        order = np.lexsort((records["seq"], records["tid"]))
        recs = records[order]
        ids, owner = flatten(recs)
        c.syscalls += ids.size
        tids = recs["tid"]
        starts = np.flatnonzero(np.r_[True, tids[1:] != tids[:-1]])
        ends = np.r_[starts[1:], recs.size]
        bounds = np.searchsorted(owner, np.r_[starts, recs.size])
        counts = recs["count"].astype(np.int64)
        for k, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            self._thread_records(recs[lo:hi], ids[bounds[k]:bounds[k + 1]], counts[lo:hi])

    def _thread_records(self, recs: np.ndarray, ids: np.ndarray, counts: np.ndarray) -> None:
        last = recs[-1]
        tid = int(last["tid"])
        t = self.threads.get(tid)
        seqs = recs["seq"].astype(np.int64)
        if t is None:
            t = _Thread(tid, int(last["tgid"]), "", int(last["cgroup_id"]), int(seqs[0]),
                        self.model.lead, self._exe(int(last["tgid"])))
            self.threads[tid] = t
            if len(self.threads) > self.max_threads:
                self.threads.popitem(last=False)
                self.counters.threads_evicted += 1
        else:
            self.threads.move_to_end(tid)
        execs = np.flatnonzero(recs["flags"] & REC_EXEC)
        if execs.size:   # where in the stream the program changed, and what ran before
            t.exec_at = t.n + int(counts[:execs[-1] + 1].sum())
            t.exec_ns = int(recs[execs[-1]]["last_ns"])
            t.comm_before = t.comm or printable(recs[0]["comm"])
            t.exec_seen = int(recs[execs[-1]]["first_ns"])
            t.exe_before = t.exe
            ends = t.n + np.cumsum(counts)
            t.pending += [(int(ends[i]), int(recs[i]["last_ns"])) for i in execs.tolist()]
        t.comm = printable(last["comm"])
        if t.exec_seen >= 0 and int(last["last_ns"]) - t.exec_ns > EXEC_WAIT_NS:
            t.exec_seen = -1        # no context for it (context off, or records lost)
            self._resolve(t, [t.exe_before] * len(t.pending))
        if not t.exe or t.n == 0 or execs.size or t.exec_seen >= 0:
            self._refresh_exe(t, int(last["tgid"]))
            t.peer = self.processes is not None and \
                self.processes.delivery_peer(int(last["tgid"]))
            if self.processes is not None:
                t.key, t.parent = self.processes.keys(int(last["tgid"]))
        t.first_ns = int(recs[0]["first_ns"])
        t.tgid, t.cgroup = int(last["tgid"]), int(last["cgroup_id"])
        expected = np.r_[t.last_seq + 1, seqs[:-1] + 1]
        gaps = np.flatnonzero(seqs != expected).tolist()
        if gaps:  # records of this thread were lost: restart its windows after each gap
            self.counters.record_gaps += len(gaps)
            offsets = np.r_[0, np.cumsum(counts)]
            lo = 0
            for g in gaps:
                if g:
                    self._append(t, ids[offsets[lo]:offsets[g]], int(recs[g - 1]["last_ns"]))
                # no window may straddle the gap: the next needs `lead` syscalls of context
                t.buf = np.empty(0, np.int32)
                t.base = t.n
                t.next_start = t.covered = t.n + self.model.lead
                lo = g
            ids = ids[offsets[lo]:]
        t.last_seq = int(seqs[-1])
        if not last["flags"] & REC_EXIT:
            self._append(t, ids, int(last["last_ns"]))
            return
        t.held = []
        self._append(t, ids, int(last["last_ns"]))
        self._final(t, int(last["last_ns"]))
        if t.held:      # the thread's last block: the process is judged on it at exit
            t.held[-1].final = True
        for b in t.held:
            self.queue.put(b)
        del self.threads[tid]
        self.counters.threads_exited += 1

    def _append(self, t: _Thread, ids: np.ndarray, ns: int) -> None:
        if ids.size:
            t.buf = np.concatenate([t.buf, ids.astype(np.int32)])
            t.n += ids.size
        m = self.model
        if t.n - m.p < t.next_start:
            return
        starts = np.arange(t.next_start, t.n - m.p + 1, m.s, dtype=np.int64)
        self._emit(t, starts, np.full(len(starts), m.p, np.int16), ns)
        t.next_start = int(starts[-1]) + m.s
        t.covered = int(starts[-1]) + m.p
        keep = max(0, min(t.next_start, t.n - m.p) - m.lead)
        if keep > t.base:
            t.buf = t.buf[keep - t.base:]
            t.base = keep

    def _final(self, t: _Thread, ns: int) -> None:
        """At exit, the end-aligned window covering what no target covered yet (as the
        offline cutter does), padded when the thread made fewer than p syscalls."""
        m = self.model
        if t.n <= t.covered or t.n == 0:
            return
        start = max(t.n - m.p, 0)
        if start - m.lead < t.base and start >= m.lead:
            return  # context lost (gap): nothing honest to score
        self._emit(t, np.array([start], np.int64),
                   np.array([min(m.p, t.n - start)], np.int16), ns)

    def _emit(self, t: _Thread, starts: np.ndarray, valid: np.ndarray, ns: int) -> None:
        m = self.model
        pos = starts[:, None] - m.lead + np.arange(m.span)[None, :]
        rel = pos - t.base
        ok = (pos >= 0) & (rel >= 0) & (pos < t.n)
        spans = np.full(pos.shape, PAD_NUMBER, np.int32)
        spans[ok] = t.buf[rel[ok]]
        self.counters.windows_cut += len(starts)
        b = Block(tid=t.tid, tgid=t.tgid, comm=t.comm, cgroup=t.cgroup, spans=spans,
                  valid=valid, starts=starts, ns=ns, exe=t.exe, first_ns=t.first_ns or ns,
                  delivery_peer=t.peer, parent=t.parent, key=t.key, exec_at=t.exec_at,
                  exec_ns=t.exec_ns, comm_before=t.comm_before, exe_before=t.exe_before,
                  marks=tuple(t.marks), unsure_from=t.pending[0][0] if t.pending else -1,
                  label=t.label)
        if t.held is not None:
            t.held.append(b)
        else:
            self.queue.put(b)


class WindowCache:
    """Known-window cache: window content -> score under the current model.

    Keys are a keyed 64-bit hash of the window's tokens (a secret per daemon start). The
    table is direct-mapped (slot = key mod capacity) in two flat arrays, so a batch is
    looked up and stored with a few vector operations and the memory is fixed
    (16 bytes a slot); a window whose slot a later window took is simply scored again."""

    def __init__(self, capacity: int, width: int):
        self.capacity = max(0, capacity)
        rng = np.random.default_rng()
        self.mult = rng.integers(1, 2**63, size=width, dtype=np.uint64) * 2 + 1
        self.table = np.zeros(self.capacity, np.uint64)    # 0: empty
        self.values = np.zeros(self.capacity, np.float64)

    def keys(self, tokens: np.ndarray) -> np.ndarray:
        """[N] uint64 keys (never 0) of N windows' tokens."""
        with np.errstate(over="ignore"):
            h = (tokens.astype(np.uint64) * self.mult[None, :tokens.shape[1]]).sum(1)
            h ^= h >> np.uint64(29)
        h[h == 0] = 1
        return h

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hit mask, scores; meaningful where hit) for an array of keys."""
        if not self.capacity:
            return np.zeros(len(keys), bool), np.zeros(len(keys))
        slots = keys % np.uint64(self.capacity)
        return self.table[slots] == keys, self.values[slots]

    def store(self, keys: np.ndarray, scores: np.ndarray) -> None:
        if self.capacity and len(keys):
            slots = keys % np.uint64(self.capacity)
            self.table[slots] = keys
            self.values[slots] = scores

    def clear(self) -> None:
        self.table[:] = 0

    def __len__(self) -> int:
        return int(np.count_nonzero(self.table))


@dataclass
class Detection:
    """One alert-worthy window, with what the alert needs."""
    block: Block
    row: int
    score: float
    exceedances: int
    evidence_m: int
    model: ModelView
    explanation: dict
    episode: dict | None = None     # for an episode: parent pid, pids, exceedances
    novelty: list = field(default_factory=list)   # lineage events behind it (to_json)
    needed: float = 0.0     # what the evidence had to reach (the alert bound in use)


class _Part:
    """Windows of some blocks on their way through one scorer cycle."""

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self.misses = self.size = 0


@dataclass(frozen=True)
class ScorerSettings:
    """How the scorer batches, caches, judges and explains: [detection] and
    [alerts] explain_positions (config.Config.scorer_settings)."""
    evidence_k: float = 0.0     # what the evidence must reach, 0 for the model's alert bound
    evidence_m: int = 8         # windows of a process the evidence sums
    cache_windows: int = 200000
    batch_windows: int = 512
    batch_wait_ms: int = 20
    explain_positions: int = 5


class Scorer:
    """The scorer thread: batches from the queue, cache, inference, bound, evidence."""

    def __init__(self, model: ModelView, queue: WindowQueue, counters: Counters,
                 on_detection, settings: ScorerSettings = ScorerSettings(),
                 observe=None, deliveries=None, peaks: list | None = None,
                 remote=None):
        st = settings
        self.model, self.queue, self.counters = model, queue, counters
        self.remote = remote    # fleet/agent.py Remote: the server scores, when it answers
        self.deliveries = deliveries    # alerts.Deliveries: when we last sent to journald
        self.on_detection, self.observe = on_detection, observe
        # `peaks`: record every excursion's peak there (the calibration replay)
        self.evidence_k, self.peaks = st.evidence_k, peaks
        self.evidence = Evidence(model.evidence_bound(st.evidence_k), st.evidence_m,
                                 peaks=peaks, bounds=model.program_bounds(st.evidence_k),
                                 window_max=model.window_max(st.evidence_k))
        self.episodes = Episodes(self.evidence.k, st.evidence_m)
        self.novel: OrderedDict = OrderedDict()     # process key -> its novelty events
        self.cache = WindowCache(st.cache_windows, model.span)
        self.batch_windows, self.batch_wait = st.batch_windows, st.batch_wait_ms / 1000
        self.explain_positions = st.explain_positions
        self.shadow: Shadow | None = None   # a candidate judging the same windows
        self.beat = time.monotonic()     # last sign of life (the watchdog reads it)
        self.busy_since = 0.0            # start of the batch in progress, 0 when idle
        self._stop = threading.Event()
        self._cut_at = float("inf")     # stopping: past this, a cycle sheds what it holds
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        # test-only fault, named so: a scorer stuck for good cannot be caused on demand
        self._stall = os.environ.get("SYSDREAM_FAULT_STALL_SCORER") == "1"

    def set_model(self, model: ModelView) -> None:
        with self._lock:
            self.model = model
            self.cache = WindowCache(self.cache.capacity, model.span)
            self._rules(model, self.evidence_k, self.evidence.m)

    def set_rules(self, evidence_k: float, evidence_m: int) -> None:
        with self._lock:
            self.evidence_k = evidence_k
            self._rules(self.model, evidence_k, evidence_m)

    def _rules(self, model: ModelView, evidence_k: float, evidence_m: int) -> None:
        bound, bounds = model.evidence_bound(evidence_k), model.program_bounds(evidence_k)
        cap = model.window_max(evidence_k)
        e = self.evidence
        if (bound, bounds, evidence_m, cap) != (e.k, e.bounds, e.m, e.window_max):
            self.evidence = Evidence(bound, evidence_m, peaks=self.peaks, bounds=bounds,
                                     window_max=cap)
            self.episodes = Episodes(bound, evidence_m)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="sysdream-scorer", daemon=True)
        self.thread.start()

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop; first score what is queued for up to `drain_s` seconds. Past that, a cycle
        that has not reached its inference sheds what it holds, and so does the queue,
        counted under reason `shutdown`: a stop takes drain_s plus at most one cycle,
        whatever the backlog."""
        deadline = time.monotonic() + drain_s
        self._cut_at = deadline
        while self.queue.size and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        with self.queue.cond:
            self.queue.cond.notify_all()
        if self.thread:
            # the cycle in progress is finished, not cut: a thread left inside torch when
            # the interpreter exits aborts the process (SIGABRT) instead of a clean exit
            self.thread.join(timeout=max(0.1, deadline - time.monotonic()) + STOP_JOIN_S)
        self.queue.clear("shutdown")

    def _cut(self) -> bool:
        """Stopping and past the drain: the rest of a cycle is shed."""
        return self._stop.is_set() and time.monotonic() > self._cut_at

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat = time.monotonic()
            blocks = self.queue.take(self.batch_windows, 0.2, self.batch_wait)
            if not blocks:
                continue
            self.busy_since = time.monotonic()
            with self._lock:
                model, cache, evidence = self.model, self.cache, self.evidence
            parts = [self._prepare(blocks, model, cache)]
            # Most windows are answered by the cache, and an inference costs ~2 ms before
            # its first window: keep taking what is already queued until the misses fill a
            # batch, the cycle holds 16 batches' windows, or the batch wait has passed.
            misses, held = parts[0].misses, parts[0].size
            while (misses < self.batch_windows and held < 16 * self.batch_windows
                   and self.queue.size
                   and time.monotonic() - self.busy_since < self.batch_wait):
                more = self.queue.take(self.batch_windows, 0.0)
                if not more:
                    break
                parts.append(self._prepare(more, model, cache))
                misses += parts[-1].misses
                held += parts[-1].size
            found = self._finish(parts, model, cache, evidence)
            self._shadowed(parts, found)
            self.busy_since = 0.0
            if self._stall:
                threading.Event().wait()  # a stalled scorer: never beats again

    def process(self, blocks: list[Block]) -> list[Detection]:
        """Score blocks at once (one cycle of the scorer thread)."""
        with self._lock:
            model, cache, evidence = self.model, self.cache, self.evidence
        parts = [self._prepare(blocks, model, cache)]
        found = self._finish(parts, model, cache, evidence)
        self._shadowed(parts, found)
        return found

    def _shadowed(self, parts: list[_Part], found: list[Detection]) -> None:
        """The cycle's windows judged once more by the shadow, when there is one."""
        shadow = self.shadow
        if shadow is not None and not self._cut():
            shadow.judge([b for p in parts for b in p.blocks], len(found))

    @staticmethod
    def _prepare(blocks: list[Block], model: ModelView, cache: WindowCache) -> _Part:
        """Tokens, keys and cache answers of some blocks; misses left to `_finish`."""
        blocks = [b for b in blocks if b.spans.shape[1] == model.span]
        part = _Part(blocks)
        if not blocks:
            return part
        part.owner = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
        part.tokens = model.tokens(np.concatenate([b.spans for b in blocks]), blocks,
                                   part.owner)
        part.valid = np.concatenate([b.valid for b in blocks])
        part.starts = np.concatenate([b.starts for b in blocks])
        keys, part.first, inverse = np.unique(cache.keys(part.tokens), return_index=True,
                                              return_inverse=True)
        part.keys, part.inverse = keys, inverse.reshape(-1)
        hit, part.uniq = cache.lookup(keys)
        part.miss = np.flatnonzero(~hit)
        part.misses, part.size = len(part.miss), len(part.tokens)
        return part

    def infer(self, model: ModelView, tokens: np.ndarray, valid: np.ndarray,
              starts: np.ndarray, n: int) -> np.ndarray:
        """Scores of the first n spans: the fleet server's when this daemon is an agent and
        the server answers in time (the n distinct spans sent, not the padding), the local
        model's otherwise (on all rows: a padded batch keeps oneDNN to a few shapes)."""
        if self.remote is not None:
            got = self.remote.score(model, tokens[:n], valid[:n], starts[:n])
            if got is not None:
                return got
        return local_scores(model, tokens, valid, starts, self.batch_windows)[:n]

    def _finish(self, parts: list[_Part], model: ModelView, cache: WindowCache,
                evidence: Evidence) -> list[Detection]:
        parts = [p for p in parts if p.blocks]
        if not parts:
            return []
        c = self.counters
        if self._cut():
            c.windows_shed["shutdown"] += sum(p.size for p in parts)
            return []
        # one inference for the distinct misses of the whole cycle
        miss_keys = np.concatenate([p.keys[p.miss] for p in parts])
        if len(miss_keys):
            ukeys, at = np.unique(miss_keys, return_index=True)

            # one row per distinct key, padded with copies of the last to a batch size of
            # a few (oneDNN compiles and caches a primitive per input shape)
            pad = np.r_[at, np.full(_padded(len(at), self.batch_windows) - len(at), at[-1])]

            def missed(field: str) -> np.ndarray:  # the field's rows of every miss
                return np.concatenate([getattr(p, field)[p.first[p.miss]]
                                       for p in parts])[pad]
            t0 = time.perf_counter()
            got = self.infer(model, missed("tokens"), missed("valid"), missed("starts"),
                             len(at))
            if self.observe:
                self.observe("inference", time.perf_counter() - t0, len(at))
            cache.store(ukeys, got)
            c.windows_scored += len(at)
            c.windows_cached += len(miss_keys) - len(at)  # missed in two parts, scored once
            for p in parts:
                p.uniq[p.miss] = got[np.searchsorted(ukeys, p.keys[p.miss])]
        out = []
        for p in parts:
            out += self._judge(p, model, evidence)
        return out

    def _judge(self, part: _Part, model: ModelView, evidence: Evidence) -> list[Detection]:
        """Bound and evidence for one prepared part, in queue order."""
        c, blocks = self.counters, part.blocks
        scores = part.uniq[part.inverse]
        c.windows_cached += part.size - part.misses  # one update: scrapes read it
        c.batches += 1
        if self.observe:
            self.observe("scores", scores, 0)
        exceeds = model.bound.exceeds(scores)
        for i in np.flatnonzero(exceeds).tolist():
            c.anomalous.add(blocks[part.owner[i]].exe)
        out = []
        # evidence per process, in bulk: windows arrive grouped by block (one thread each)
        bounds = np.r_[0, np.cumsum([len(b) for b in blocks])]
        news = self._sequence_news(blocks, model)
        for k, b in enumerate(blocks):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            if b.delivery_peer and exceeds[lo:hi].any():
                aside = self._delivery_windows(b, model) & exceeds[lo:hi]
                if aside.any():
                    c.set_aside["own_alert_delivery"] += int(aside.sum())
                    exceeds[lo:hi] &= ~aside
            weights = self._novelty(b, model, graded(model.bound, model.alpha,
                                                     scores[lo:hi], exceeds[lo:hi],
                                                     evidence.window_max),
                                    None if news is None else (news[0][lo:hi],
                                                               news[1][lo:hi]))
            key, prog = b.key or b.tgid, b.label or (program(b.exe) if b.exe else "")
            for i, n in evidence.add_many(key, weights, prog):
                out.append(Detection(b, i, float(scores[lo + i]), n, evidence.m, model, {},
                                     novelty=self._novelty_of(b, i, model, evidence.m,
                                                              spend=True),
                                     needed=evidence.bound_for(prog)))
            if b.final and b.tid == b.tgid:     # the process exits: its evidence goes
                evidence.forget(key)
            # the same windows, as part of an episode of their parent's young children
            young = np.flatnonzero(b.starts < evidence.m * model.s)
            if b.parent and young.size:
                for j, n, pids in self.episodes.add_many(b.parent, b.tgid, weights[young],
                                                         b.ns):
                    i = int(young[j])
                    ep = {"parent_pid": b.parent[0], "pids": pids, "exceedances": round(n, 2),
                          "windows": self.episodes.m}
                    out.append(Detection(b, i, float(scores[lo + i]), n, evidence.m, model,
                                         {}, ep, self._novelty_of(b, i, model, evidence.m),
                                         needed=evidence.k))
        # explained in one batch: an alert storm raises hundreds a cycle, and one window
        # scored alone costs about as much as a batch of a hundred
        for d, ex in zip(out, self.explain_many(model, [(d.block, d.row) for d in out]),
                         strict=True):
            d.explanation = ex
            self.on_detection(d)
        return out

    @staticmethod
    def _sequence_news(blocks: list[Block], model: ModelView
                       ) -> tuple[np.ndarray, np.ndarray] | None:
        """Judge.sequence_news for the windows of every block one program made, in one
        pass (a block with an exec inside is judged per program in _novelty)."""
        judge = model.lineage
        if judge is None or not judge.profile.grams:
            return None
        progs: dict[str, int] = {}
        codes = [progs.setdefault(program(b.exe), len(progs))
                 if b.exe and not b.marks and b.unsure_from < 0 else -1 for b in blocks]
        if not progs:
            return None
        return judge.sequence_news(np.concatenate([b.spans for b in blocks]), model.lead,
                                   np.repeat(codes, [len(b) for b in blocks]), list(progs))

    def _novelty(self, b: Block, model: ModelView, base: np.ndarray,
                 news: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The block's window weights: `base` (each window's graded weight), plus the weight
        of each lineage novelty (an exec the profile never saw, on the process's first
        window after it; a syscall or a run of sequences its program never made, on the
        first window holding it).
        The events are kept for the process's next alert."""
        judge = model.lineage
        if judge is None:
            return base
        # an exec's events go to the first window holding a syscall after the exec
        # (the block may begin with windows the program before it made)
        at = 0 if b.exec_at < 0 else min(int(np.searchsorted(
            b.starts + model.p, b.exec_at, side="right")), len(b) - 1)
        events = [(at, e) for e in judge.take(b.key)] if b.key else []
        key = b.key or (b.tgid, 0)
        targets = b.spans[:, model.lead:]
        # each syscall against the program that made it: one up to an exec (its record
        # included, as the profile learnt them) the program before that exec; none after
        # an exec whose program the process table does not know yet
        if not b.marks and b.unsure_from < 0:       # one program made all of them
            if b.exe:
                events += judge.new_syscalls(key, program(b.exe), targets)
                events += judge.new_sequences(key, program(b.exe), b.spans, model.lead,
                                              news=news)
            return self._weigh(b, model, base, events)
        pos = b.starts[:, None] + np.arange(model.p)[None, :]
        owner = np.full(pos.shape, len(b.marks), np.int64)
        for i in range(len(b.marks) - 1, -1, -1):
            owner[pos < b.marks[i][0]] = i
        if b.unsure_from >= 0:
            owner[pos >= b.unsure_from] = -1
        exes = [m[1] for m in b.marks] + [b.exe]
        for i in np.unique(owner[owner >= 0]).tolist():
            if exes[i]:
                events += judge.new_syscalls(key, program(exes[i]),
                                             np.where(owner == i, targets, PAD_NUMBER))
                events += judge.new_sequences(key, program(exes[i]), b.spans, model.lead,
                                              owner == i)
        return self._weigh(b, model, base, events)

    def _weigh(self, b: Block, model: ModelView, base: np.ndarray, events: list
               ) -> np.ndarray:
        """Window weights with the events' weights added; the events kept for alerts."""
        if not events:
            return base
        weights = base.copy()
        key = b.key or b.tgid
        mine = self.novel.get(key)
        if mine is None:
            mine = self.novel[key] = []
            while len(self.novel) > 65536:
                self.novel.popitem(last=False)
        for row, e in events:
            weights[row] += lineage_weight(e.p, model.alpha)
            mine.append((int(b.starts[row]), e.to_json(model.alpha)))
        del mine[:-16]
        return weights

    def _novelty_of(self, b: Block, row: int, model: ModelView, m: int,
                    spend: bool = False) -> list[dict]:
        """The lineage events among the evidence's last m windows up to window `row`
        (those that counted); `spend`: forgotten, as the evidence starts over."""
        key = b.key or b.tgid
        mine = self.novel.pop(key, []) if spend else self.novel.get(key, [])
        since = int(b.starts[row]) - m * model.s
        return [e for pos, e in mine if pos >= since]

    def _delivery_windows(self, b: Block, model: ModelView) -> np.ndarray:
        """The windows of the alert taker (journald) that are its handling of our own
        delivery: within DELIVERY_SLACK_S after one of our sends, and holding none of the
        syscalls a log daemon taking a message never makes (docs/architecture.md)."""
        if self.deliveries is None or not self.deliveries.near(
                b.first_ns, b.ns, int(DELIVERY_SLACK_S * 1e9)):
            return np.zeros(len(b), bool)
        never = model.never_for_delivery
        return ~np.isin(b.spans[:, model.lead:], never).any(axis=1)

    def explain_many(self, model: ModelView, items: list[tuple[Block, int]]) -> list[dict]:
        """Rescore windows with detail, together (padded to a batch size of a few shapes,
        as inference is), and explain each (positions in the thread's stream)."""
        from sysdream.model.detector import SequenceScores
        from sysdream.model.scoring import WindowScores, score

        if not items:
            return []
        n = len(items)
        pad = np.r_[np.arange(n), np.full(_padded(n, self.batch_windows) - n, n - 1)]
        spans = np.stack([b.spans[row] for b, row in items])
        tokens = model.tokens(spans, [b for b, _ in items], np.arange(n))
        valid = np.array([b.valid[row] for b, row in items])
        w = model.geom.windows(tokens[pad], valid[pad], np.full(len(pad), model.lead))
        s = score(model.det.net, w, self.batch_windows, detail=True)
        sigmas = model.bound.sigmas(s.score[:n])
        out = []
        for k, (b, row) in enumerate(items):
            one = slice(k, k + 1)
            names = model.names(spans[k])
            if model.conditioned:   # what the network read there: the program's token
                names[0] = names[model.p] = model.det.vocab.decode([tokens[k, 0]])[0]
            res = SequenceScores(w.take(one), WindowScores(
                *(getattr(s, f)[one] for f in ("score", "nll", "expected", "expected_p",
                                                "observed_p", "attention"))),
                model.bound.exceeds(s.score[one]), [], names)
            ex = model.det.explain(res, 0, self.explain_positions)
            shift = int(b.starts[row]) - model.lead
            for item in ex["surprises"]:
                item["position_in_sequence"] += shift
            for item in ex.get("attention", []):
                item["position"] += shift
            ex["start"] = int(b.starts[row])
            ex["context"] = [str(x) for x in names[:model.lead] if x != "<pad>"]
            ex["unknown"] = sorted({str(x) for x, t in zip(names.tolist(), tokens[k].tolist(),
                                                           strict=True) if t == UNK})
            ex["bound"] = model.bound.bound
            ex["sigmas"] = float(sigmas[k])
            out.append(ex)
        return out


class Shadow:
    """A candidate model judging the windows the model in use judges, with its whole
    alert rule (scheduled retraining, daemon/retraining.py): its alerts are counted, never
    sent, beside the alerts of the model in use on the same windows."""

    def __init__(self, model: ModelView, settings: ScorerSettings = ScorerSettings(),
                 deliveries=None):
        c = Counters()
        self.model = model
        self.scorer = Scorer(model, WindowQueue(1, c), c, self._alert, settings,
                             deliveries=deliveries)
        self.alerts = self.current = self.windows = 0
        self.by_exe: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def _alert(self, d: Detection) -> None:
        self.alerts += 1
        self.by_exe[d.block.exe or d.block.comm] += 1

    def judge(self, blocks: list[Block], current: int) -> None:
        """`blocks` of one cycle, in which the model in use raised `current` alerts."""
        with self._lock:
            self.current += current
            span = self.model.span
            self.windows += sum(len(b) for b in blocks if b.spans.shape[1] == span)
            self.scorer.process(blocks)

    def result(self) -> dict:
        with self._lock:
            return {"windows": self.windows, "alerts": self.alerts, "current": self.current,
                    "by_exe": dict(self.by_exe)}


def _padded(n: int, batch: int) -> int:
    """The batch size n windows are scored at: the next power of two up to `batch` (at
    least 8), a multiple of `batch` beyond, so inference sees a handful of shapes."""
    if n > batch:
        return -(-n // batch) * batch
    return min(max(8, 1 << (n - 1).bit_length()), batch)


def local_scores(model: ModelView, tokens: np.ndarray, valid: np.ndarray,
                 starts: np.ndarray, batch: int) -> np.ndarray:
    """The local model's scores of spans (the rows of one padded batch)."""
    from sysdream.model.scoring import score
    w = model.geom.windows(tokens, valid, starts)
    return score(model.det.net, w, batch, detail=False).score
