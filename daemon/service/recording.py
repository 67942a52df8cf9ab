"""Recording this host into a trace file and training on it: the one recorder of the
learner's baseline, the retrainer's recent activity and `sysdream record`, and the one
trainer child of the learner and the retrainer.

    unique_trace   a name in a folder no earlier recording has
    Recording      a trace file being written: records and context wait for the next flush
    TrainerChild   `sysdream train` as a child at nice and SCHED_IDLE, its progress read
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sysdream.probes.tracefile import TraceWriter, host_header

from .runtime import trainer_child


def unique_trace(folder: Path, prefix: str) -> Path:
    """folder/<prefix>-<time>.sdtrace under a name no earlier recording has: the wall clock
    may have stepped back to a second already used (the writer replaces a file of the same
    name)."""
    stamp = int(time.time())
    path, n = folder / f"{prefix}-{stamp}.sdtrace", 0
    while path.exists():
        n += 1
        path = folder / f"{prefix}-{stamp}-{n}.sdtrace"
    return path


class Recording:
    """A trace file being written: chunk records and process context wait for the next
    flush (context first: a process is described before its syscalls, as in the kernel),
    then the kernel counters. A write the directory refuses raises OSError; the owner then
    abandons the file (what was written stays). `limit` syscalls at most (None: no limit);
    with `counters_always` every flush writes the counters, records or not (`sysdream
    record`: a trace of a quiet second still says what the kernel saw)."""

    def __init__(self, path: Path, settings, counters: Callable[[], dict],
                 limit: int | None = None, counters_always: bool = False):
        self.path, self.limit = path, limit
        self._counters = counters
        self._counters_always = counters_always
        self.syscalls = 0           # accepted so far (at most about `limit`)
        self._pending: list[np.ndarray] = []
        self._pending_context: list[np.ndarray] = []
        try:
            self.writer = TraceWriter(path, host_header(settings.chunk,
                                                        dataclasses.asdict(settings)))
        except OSError:
            with contextlib.suppress(OSError):     # a file without a whole header is no
                path.unlink(missing_ok=True)        # recording
            raise

    @property
    def full(self) -> bool:
        return self.limit is not None and self.syscalls >= self.limit

    def add(self, records: np.ndarray) -> None:
        if records.size and not self.full:
            self._pending.append(records)
            self.syscalls += int(records["count"].sum())

    def add_context(self, records: np.ndarray) -> None:
        if records.size and not self.full:
            self._pending_context.append(records)

    def flush(self) -> None:
        # taken off the lists before the write: what was read may be a view of the ring
        # buffer, which the capture cannot unmap while a failed write still holds it
        context, self._pending_context = self._pending_context, []
        records, self._pending = self._pending, []
        if context:
            self.writer.write_context(np.concatenate(context))
        if records:
            self.writer.write_records(np.concatenate(records))
        if records or self._counters_always:
            self.writer.write_counters(self._counters())

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def abandon(self) -> None:
        self._pending.clear()
        self._pending_context.clear()
        self.writer.abandon()


class TrainerChild:
    """`sysdream train` as a child at `nice` and SCHED_IDLE with `threads` OpenMP threads:
    its progress read as JSON lines from a pipe of its own (`epoch`), its stderr logged and
    its last lines kept (`lines`)."""

    def __init__(self, cmd: list[str], nice: int, threads: int,
                 log: Callable[[str], None], name: str = "trainer"):
        self.log, self.name = log, name
        self.epoch = 0
        self.lines: list[str] = []
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # progress comes as JSON lines on a pipe of its own (--progress-fd); stderr is the
        # trainer's log, kept for the journal and for the reason of a failure
        rd, wr = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [*cmd, "--progress-fd", str(wr)], stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, env=env, pass_fds=(wr,),
                preexec_fn=trainer_child(nice))
        except OSError:
            os.close(rd)
            raise
        finally:
            os.close(wr)
        threading.Thread(target=self._read_log, daemon=True,
                         name=f"sysdream-{name}-log").start()
        threading.Thread(target=self._read_progress, args=(rd,), daemon=True,
                         name=f"sysdream-{name}-progress").start()

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        self.proc.kill()

    def why(self, rc: int) -> str:
        """The reason of a failed exit: its last line."""
        return self.lines[-1] if self.lines else f"exit {rc}"

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            line = line.strip()
            if not line:
                continue
            self.lines.append(line)
            del self.lines[:-20]
            self.log(f"{self.name}: {line}")

    def _read_progress(self, fd: int) -> None:
        """The trainer's progress events (training/progress.py): the epochs of the model
        being trained."""
        with open(fd, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                epoch = event.get("epoch") if isinstance(event, dict) else None
                if isinstance(epoch, int) and not isinstance(epoch, bool):
                    self.epoch = epoch
