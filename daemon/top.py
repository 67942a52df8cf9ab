"""`sysdream top`: a live per-process view of captured syscall rates and losses."""

from __future__ import annotations

import sys
import time

import numpy as np

from sysdream.probes.capture import Capture, CaptureSettings


def summarise(records: np.ndarray, limit: int) -> list[tuple[int, str, int]]:
    """(tgid, comm, syscalls) for the busiest processes in `records`, busiest first."""
    if records.size == 0:
        return []
    tgids, first, inverse = np.unique(records["tgid"], return_index=True, return_inverse=True)
    totals = np.bincount(inverse, weights=records["count"]).astype(np.int64)
    order = np.argsort(-totals)[:limit]
    comms = records["comm"][first]
    return [(int(tgids[i]), comms[i].decode(errors="replace"), int(totals[i])) for i in order]


def run(settings: CaptureSettings, interval: float = 1.0, rows: int = 15,
        iterations: int | None = None, out=sys.stdout) -> int:
    tty = out.isatty()
    with Capture(settings) as cap:
        done = 0
        prev = cap.counters()
        while iterations is None or done < iterations:
            start = time.monotonic()
            batches = []
            while time.monotonic() - start < interval:
                cap.wait(0.01)
                batches.append(cap.read())
            elapsed = time.monotonic() - start
            records = np.concatenate(batches) if batches else np.empty(0, cap.dtype)
            now = cap.counters()
            delta = {k: now[k] - prev[k] for k in now}
            prev = now
            if tty:
                out.write("\x1b[H\x1b[2J")
            out.write(f"syscalls/s seen {delta['seen'] / elapsed:,.0f}  "
                      f"traced {delta['traced'] / elapsed:,.0f}  "
                      f"delivered {delta['emitted_syscalls'] / elapsed:,.0f}  "
                      f"lost {delta['lost_syscalls']} (ring buffer full)  "
                      f"{delta['lost_nostorage']} (no thread storage)\n")
            out.write(f"{'PID':>8} {'COMM':16} {'SYSCALLS/S':>12}\n")
            for tgid, comm, n in summarise(records, rows):
                out.write(f"{tgid:>8} {comm:16} {n / elapsed:>12,.0f}\n")
            out.flush()
            done += 1
    return 0
