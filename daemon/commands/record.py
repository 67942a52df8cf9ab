"""`sysdream record`: capture to a trace file for a while, flushing a block every second."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from sysdream.probes.capture import Capture, CaptureSettings
from sysdream.probes.errors import TraceFileError

from ..service.recording import Recording
from ..service.runtime import on_signals, restore_signals

FLUSH_EVERY_S = 1.0


def run(settings: CaptureSettings, seconds: float, output: str, err=sys.stderr,
        fmt: str = "text") -> int:
    if seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    with Capture(settings) as cap:
        tids: set[int] = set()
        rec = Recording(Path(output), settings, cap.counters, counters_always=True)
        writer = rec.writer
        try:
            end = time.monotonic() + seconds
            next_flush = time.monotonic() + FLUSH_EVERY_S
            print(f"recording to {output} for {seconds:g} s (probes attached; Ctrl-C "
                  "stops early)", file=err, flush=True)
            # Ctrl-C or SIGTERM stops early and keeps everything read so far (checked
            # between reads: a stop never lands in the middle of writing a block)
            stop = []
            old = on_signals(lambda: stop.append(1))
            try:
                while time.monotonic() < end and not stop:
                    cap.wait()
                    _take(rec, cap, tids)
                    if time.monotonic() >= next_flush:
                        rec.flush()
                        next_flush += FLUSH_EVERY_S
                _take(rec, cap, tids)
                rec.flush()
            except OSError as exc:
                if writer.failed is None:
                    raise
                raise TraceFileError(
                    f"{output}: {exc.strerror or exc} after {writer.syscalls} syscalls; the "
                    "recording stopped there and the file keeps those in whole blocks (a "
                    "short trace, not the whole time asked for); free space or name another "
                    "output") from None
            finally:
                restore_signals(old)
        finally:
            writer.close()
        counters = cap.counters()
    lost = counters["lost_syscalls"] + counters["lost_nostorage"]
    if fmt == "json":
        print(json.dumps({"output": output, "syscalls": writer.syscalls,
                          "records": writer.records, "threads": len(tids), "lost": lost,
                          "seconds_asked": seconds, "stopped_early": bool(stop)}))
    else:
        print(f"recorded {writer.syscalls} syscalls in {writer.records} records from "
              f"{len(tids)} threads to {output}; lost {lost}", file=err)
    return 0


def _take(rec: Recording, cap: Capture, tids: set[int]) -> None:
    p = cap.read_pass()
    rec.add_context(p.context)
    records = p.records
    rec.add(records)
    tids.update(np.unique(records["tid"]).tolist())
