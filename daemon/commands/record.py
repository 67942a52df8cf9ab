"""`sysdream record`: capture to a trace file for a while, flushing a block every second."""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from sysdream.probes.capture import Capture, CaptureSettings
from sysdream.probes.errors import TraceFileError
from sysdream.probes.streams import by_thread
from sysdream.probes.tracefile import TraceWriter, host_header

from ..service.runtime import on_signals, restore_signals

FLUSH_EVERY_S = 1.0


def run(settings: CaptureSettings, seconds: float, output: str, err=sys.stderr) -> int:
    if seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    with Capture(settings) as cap:
        header = host_header(settings.chunk, dataclasses.asdict(settings))
        tids: set[int] = set()
        with TraceWriter(output, header) as writer:
            end = time.monotonic() + seconds
            next_flush = time.monotonic() + FLUSH_EVERY_S
            print(f"recording to {output} for {seconds:g} s (probes attached; Ctrl-C "
                  "stops early)", file=err, flush=True)
            pending: list[np.ndarray] = []
            context: list[np.ndarray] = []
            # Ctrl-C or SIGTERM stops early and keeps everything read so far (checked
            # between reads: a stop never lands in the middle of writing a block)
            stop = []
            old = on_signals(lambda: stop.append(1))
            try:
                while time.monotonic() < end and not stop:
                    cap.wait()
                    context.append(cap.read_context())
                    pending.append(cap.read())
                    if time.monotonic() >= next_flush:
                        _flush(writer, cap, pending, context, tids)
                        next_flush += FLUSH_EVERY_S
                context.append(cap.read_context())
                pending.append(cap.read())
                _flush(writer, cap, pending, context, tids)
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
            counters = cap.counters()
    lost = counters["lost_syscalls"] + counters["lost_nostorage"]
    print(f"recorded {writer.syscalls} syscalls in {writer.records} records from "
          f"{len(tids)} threads to {output}; lost {lost}", file=err)
    return 0


def _flush(writer: TraceWriter, cap: Capture, pending: list[np.ndarray],
           context: list[np.ndarray], tids: set[int]) -> None:
    """Context first: a process is described before its syscalls, as in the kernel."""
    if context:
        writer.write_context(np.concatenate(context))
        context.clear()
    batch = np.concatenate(pending) if pending else np.empty(0, cap.dtype)
    pending.clear()
    writer.write_records(batch)
    writer.write_counters(cap.counters())
    tids.update(by_thread(batch))
