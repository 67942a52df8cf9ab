"""`sysdream top`: a live per-process view of captured syscall rates and losses."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from ..context.printable import printable
from ..context.processes import ProcessTable


def summarise(records: np.ndarray, limit: int) -> list[tuple[int, str, int]]:
    """(tgid, comm, syscalls) for the busiest processes in `records`, busiest first."""
    if records.size == 0:
        return []
    tgids, first, inverse = np.unique(records["tgid"], return_index=True, return_inverse=True)
    totals = np.bincount(inverse, weights=records["count"]).astype(np.int64)
    order = np.argsort(-totals)[:limit]
    comms = records["comm"][first]
    return [(int(tgids[i]), printable(comms[i]), int(totals[i])) for i in order]


def run(source, interval: float = 1.0, rows: int = 15, iterations: int | None = None,
        out=sys.stdout, fmt: str = "text") -> int:
    """Show `source` (a live Capture or a TraceReplay) every `interval` seconds; with
    `fmt` "json", one JSON object a refresh (a line each) instead of the table."""
    tty = out.isatty() and fmt == "text"
    replay = hasattr(source, "exhausted")
    table = ProcessTable(proc="/nonexistent" if replay else "/proc")  # a trace's own only
    first = source.counters()
    prev = dict.fromkeys(first, 0) if replay else first
    done = 0
    while iterations is None or done < iterations:
        start = time.monotonic()
        batches = []
        if replay:      # the whole file, batch by batch
            while not source.exhausted:
                batches.append(source.read())
        else:
            while time.monotonic() - start < interval:
                source.wait()
                batches.append(source.read())
        table.ingest(source.read_context())     # after the chunks: each one's process
        elapsed = interval if replay else time.monotonic() - start
        records = np.concatenate(batches) if batches else np.empty(0, source.dtype)
        now = source.counters()
        delta = {k: now.get(k, 0) - prev.get(k, 0) for k in now}
        prev = now
        rate = "syscalls" if replay else "syscalls/s"
        scale = 1.0 if replay else elapsed
        if fmt == "json":
            out.write(json.dumps({
                "seconds": None if replay else round(elapsed, 3), "per_second": not replay,
                "seen": delta.get("seen", 0) / scale, "traced": delta.get("traced", 0) / scale,
                "delivered": int(records["count"].sum()) / scale,
                "lost_ring_buffer_full": delta.get("lost_syscalls", 0),
                "lost_no_thread_storage": delta.get("lost_nostorage", 0),
                "processes": [{"pid": tgid, "comm": comm, "syscalls": n / scale,
                               "exe": table.known_exe(tgid)}
                              for tgid, comm, n in summarise(records, rows)]},
                separators=(",", ":")) + "\n")
            out.flush()
            done += 1
            if replay:
                break
            continue
        if tty:
            out.write("\x1b[H\x1b[2J")
        out.write(f"{rate}: seen {delta.get('seen', 0) / scale:,.0f}  "
                  f"traced {delta.get('traced', 0) / scale:,.0f}  "
                  f"delivered {int(records['count'].sum()) / scale:,.0f}  "
                  f"lost {delta.get('lost_syscalls', 0)} (ring buffer full)  "
                  f"{delta.get('lost_nostorage', 0)} (no thread storage)\n")
        out.write(f"{'PID':>8} {'COMM':16} {rate.upper():>12}  EXE\n")
        for tgid, comm, n in summarise(records, rows):
            out.write(f"{tgid:>8} {comm:16} {n / scale:>12,.0f}  {table.known_exe(tgid)}\n")
        out.flush()
        done += 1
        if replay:
            break
    return 0
