"""The numpy mirrors of `struct chunk_rec`, `struct proc_rec`, `struct act_rec` and
`struct counters` in capture.bpf.c.

tests/probes/test_capture.py checks sizes and offsets against the compiled program.
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
                  "lost_records", "lost_syscalls", "lost_nostorage", "unwoken",
                  "ctx_records", "ctx_lost", "act_records", "act_lost")

# proc_rec.kind
CTX_NEW = 1    # a process's first syscall since the program loaded
CTX_EXEC = 2   # it executed a new program
CTX_EXIT = 3   # it ended
# proc_rec.flags
EXE_MEMFD = 0x01
EXE_DELETED = 0x02
EXE_WRITABLE = 0x04
ARGS_TRUNCATED = 0x08
CTX_NO_MM = 0x10
PATH_CUT = 0x20
EXE_FOREIGN_MNT = 0x40     # the executable's mount is not in the initial mount namespace
EXE_USERNS_MNT = 0x80      # ... and its namespace is owned by a non-initial user namespace
TASK_FOREIGN_MNTNS = 0x100  # the process is not in the initial mount namespace
STDIN_INET = 0x200         # (exec) descriptor 0 is an IPv4 or IPv6 socket
STDOUT_INET = 0x400        # (exec) descriptor 1 is one
ARGS_LEN = 256
PATH_DEPTH = 16
PATH_NAME = 48
UNSET_ID = 0xFFFFFFFF   # loginuid / sessionid never set

CONTEXT_DTYPE = np.dtype([
    ("ns", "<u8"),
    ("start_ns", "<u8"),
    ("parent_start_ns", "<u8"),
    ("cgroup_id", "<u8"),
    ("exe_ino", "<u8"),
    ("kind", "<u4"),
    ("tgid", "<u4"),
    ("tid", "<u4"),
    ("ppid", "<u4"),
    ("uid", "<u4"),
    ("gid", "<u4"),
    ("euid", "<u4"),
    ("egid", "<u4"),
    ("loginuid", "<u4"),
    ("sessionid", "<u4"),
    ("exe_dev", "<u4"),
    ("exe_fs_magic", "<u4"),
    ("args_len", "<u2"),
    ("flags", "<u2"),
    ("comm", "S16"),
    ("exe_name", "S64"),
    ("filename", "S256"),
    ("args", "V256"),
    ("path_depth", "<u4"),
    ("mntns", "<u4"),
    ("path", "S48", (16,)),
], align=True)

ACT_PATH = 256
# struct act_rec: one act (probes/acts.py names the kinds and flags and decodes them).
ACT_DTYPE = np.dtype([
    ("ns", "<u8"),
    ("start_ns", "<u8"),
    ("cgroup_id", "<u8"),
    ("args", "<u8", (6,)),
    ("aux", "<u8"),
    ("aux2", "<u8"),
    ("kind", "<u4"),
    ("nr", "<u4"),
    ("tgid", "<u4"),
    ("tid", "<u4"),
    ("uid", "<u4"),
    ("euid", "<u4"),
    ("flags", "<u4"),
    ("family", "<u2"),
    ("port", "<u2"),
    ("addr", "u1", (16,)),
    ("path_len", "<u2"),
    ("path2_len", "<u2"),
    ("comm", "S16"),
    ("path", "V256"),
    ("path2", "V256"),
], align=True)


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
