"""The numpy mirror of `struct chunk_rec` and `struct counters` in capture.bpf.c.

tests/probes/test_layout.py checks size and offsets against the compiled program.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CHUNK = 64

# chunk_rec.flags: why a record was sent.
REC_FULL = 0x01
REC_EXEC = 0x02
REC_EXIT = 0x04
REC_AGE = 0x08
REC_SLEEP = 0x10
REC_SWITCH = 0x20
REC_COMPAT = 0x40  # a 32-bit thread: ids are compat numbers (see streams.flatten)

COUNTER_FIELDS = ("filtered", "traced", "emitted_records", "emitted_syscalls",
                  "lost_records", "lost_syscalls", "lost_nostorage", "unwoken")


def record_dtype(chunk: int = DEFAULT_CHUNK) -> np.dtype:
    """Structured dtype of one chunk record carrying `chunk` syscall ids."""
    return np.dtype([
        ("first_ns", "<u8"),
        ("last_ns", "<u8"),
        ("cgroup_id", "<u8"),
        ("tgid", "<u4"),
        ("tid", "<u4"),
        ("seq", "<u4"),
        ("count", "<u2"),
        ("flags", "<u2"),
        ("comm", "S16"),
        ("ids", "<u2", (chunk,)),
    ], align=True)


def check_chunk(chunk: int) -> int:
    if chunk < 8 or chunk > 1024 or chunk & (chunk - 1):
        raise ValueError(f"chunk size must be a power of two between 8 and 1024, got {chunk}")
    return chunk
