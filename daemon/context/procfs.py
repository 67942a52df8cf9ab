"""What /proc says of a process, for the few the kernel's context records did not describe
(an ancestor asleep since capture began, or a host without BTF).

Start times in /proc are clock ticks of the boot clock; the kernel's records use
CLOCK_MONOTONIC. They are converted with the current offset between the two clocks (the
time the host was suspended), so a /proc start agrees with the kernel's to within a tick.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from sysdream.probes.capture import kernel_dev
from sysdream.probes.layout import UNSET_ID

from .cgroups import CgroupPaths

_HZ = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class ProcEntry:
    pid: int
    ppid: int
    start_ns: int            # CLOCK_MONOTONIC
    parent_start_ns: int     # 0 when the parent could not be read
    comm: bytes
    args: list[bytes]
    uid: int
    euid: int
    gid: int
    egid: int
    loginuid: int
    sessionid: int
    cgroup_id: int
    exe: bytes               # readlink of /proc/PID/exe, b"" when not ours to read
    dev: int
    ino: int


START_SLACK_NS = 30_000_000   # /proc start times are in clock ticks of the boot clock


def boot_offset_ns() -> int:
    """CLOCK_BOOTTIME - CLOCK_MONOTONIC now (time suspended)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()


def split_args(raw: bytes) -> list[bytes]:
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


def _start_ns(stat: bytes) -> int:
    ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
    return ticks * 1_000_000_000 // _HZ - boot_offset_ns()


def start_of(pid: int, proc: str = "/proc") -> int:
    """The start (CLOCK_MONOTONIC ns) of the process `pid` is now; 0 when there is none."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            return _start_ns(f.read())
    except (OSError, ValueError, IndexError):
        return 0


def read(proc: str, pid: int, cgroups: CgroupPaths) -> ProcEntry | None:
    """The process `pid` as /proc (mounted at `proc`) shows it; None once it is gone."""
    base = f"{proc}/{pid}"
    try:
        with open(f"{base}/stat", "rb") as f:
            stat = f.read()
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        start = _start_ns(stat)
        status = {}
        with open(f"{base}/status", "rb") as f:
            for line in f:
                k, _, v = line.partition(b":")
                status[k] = v.split()
        with open(f"{base}/cmdline", "rb") as f:
            args = split_args(f.read(4096))
        comm = stat[stat.index(b"(") + 1:stat.rindex(b")")][:15]
    except (OSError, ValueError, IndexError):
        return None
    uid = [int(x) for x in status.get(b"Uid", [UNSET_ID] * 2)]
    gid = [int(x) for x in status.get(b"Gid", [UNSET_ID] * 2)]
    exe, dev, ino = b"", 0, 0
    try:
        exe = os.readlink(f"{base}/exe".encode())
        st = os.stat(f"{base}/exe")
        dev, ino = kernel_dev(st.st_dev), st.st_ino
    except OSError:
        pass
    try:   # the parent's start, so that a reused parent pid is not taken for the parent
        with open(f"{proc}/{ppid}/stat", "rb") as f:
            parent_start = _start_ns(f.read())
    except (OSError, ValueError, IndexError):
        parent_start = 0
    return ProcEntry(pid, ppid, start, parent_start, comm, args, uid[0], uid[1], gid[0],
                     gid[1], _read_int(f"{base}/loginuid"), _read_int(f"{base}/sessionid"),
                     _cgroup_id(base, cgroups), exe, dev, ino)


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return UNSET_ID


def _cgroup_id(base: str, cgroups: CgroupPaths) -> int:
    """The cgroup v2 id of a process, from /proc/PID/cgroup ("0::/path")."""
    if cgroups.root is None:
        return 0
    try:
        with open(f"{base}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return os.stat(f"{cgroups.root}{line[3:].strip()}").st_ino
    except OSError:
        pass
    return 0
