"""The reader's side of the pipeline: chunk records -> per-thread streams -> windows -> blocks
on the queue. It never waits for anything downstream.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from sysdream.probes.layout import REC_EXEC, REC_EXIT
from sysdream.probes.streams import flatten

from ..context.printable import printable
from .block import PAD_NUMBER, Block, _Thread
from .queue import Counters, WindowQueue
from .view import ModelView

EXEC_WAIT_NS = 2_000_000_000   # how long a thread asks the table for its exec's image


EXEC_SLACK_NS = 100_000   # an exec's context record: stamped at most this long before


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
