"""A block of windows cut from one thread's stream, with who made each window (the program
label, the exec marks, where the process table was not sure yet), and a thread's buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

PAD_NUMBER = 65536  # a span position before the thread's first syscall


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
