"""Trace read-back speed: one million syscalls through read_trace, against reading the
same bytes with numpy alone (the reference, in the same run).

    .venv/bin/python bench/tracefile.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from sysdream.probes.layout import record_dtype
from sysdream.probes.streams import by_thread
from sysdream.probes.tracefile import TraceWriter, host_header, read_trace

SYSCALLS = 1_000_000
CHUNK = 64


def best(fn, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    n = SYSCALLS // CHUNK
    recs = np.zeros(n, record_dtype(CHUNK))
    recs["tid"] = np.arange(n) % 500
    recs["seq"] = np.arange(n) // 500
    recs["count"] = CHUNK
    recs["ids"] = np.random.default_rng(0).integers(0, 300, (n, CHUNK))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.sdtrace"
        with TraceWriter(path, host_header(CHUNK)) as w:
            for block in np.array_split(recs, 16):  # about one block per second of capture
                w.write_records(block)
                w.write_counters({"traced": 0})
        ours = best(lambda: read_trace(path))
        raw = best(lambda: np.fromfile(path, dtype=np.uint8))
        streams = best(lambda: by_thread(read_trace(path).records))
        size = path.stat().st_size
    print(f"read {SYSCALLS:,} syscalls ({size / 1e6:.1f} MB): read_trace "
          f"{ours * 1e3:.1f} ms, raw numpy read {raw * 1e3:.1f} ms ({ours / raw:.1f}x); "
          f"with per-thread reassembly of 500 threads {streams * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
