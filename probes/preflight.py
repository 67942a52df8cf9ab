"""Can capture work on this host? One check per prerequisite, each naming its fix.

`sysdream doctor` prints these; the loader runs them before compiling so a user
gets one clear line instead of a bcc traceback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import errors

CAP_PERFMON = 38
CAP_BPF = 39

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_ARRAY = 2
_BPF_MAP_TYPE_RINGBUF = 27

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
TRACEPOINTS = ("raw_syscalls/sys_enter", "sched/sched_process_exec",
               "sched/sched_process_exit", "sched/sched_switch")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    error: type[errors.CaptureError] | None = None

    def raise_if_failed(self) -> None:
        if not self.ok and self.error is not None:
            raise self.error(f"{self.detail}; fix: {self.fix}" if self.fix else self.detail)


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> Check:
    name = "privileges"
    if os.geteuid() == 0:
        return Check(name, True, "running as root")
    caps = effective_caps()
    have = [n for n, bit in (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))
            if caps >> bit & 1]
    if len(have) == 2:
        return Check(name, True, "running with CAP_BPF and CAP_PERFMON")
    return Check(name, False, f"running as uid {os.geteuid()} without CAP_BPF and CAP_PERFMON",
                 "run as root (sudo) or grant CAP_BPF,CAP_PERFMON (the systemd unit does)",
                 errors.PrivilegeError)


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("_pad", ctypes.c_uint8 * 108)]


def _bpf_map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """Create and close a BPF map; returns 0 or the errno."""
    nr = _BPF_SYSCALL.get(platform.machine())
    if nr is None:
        return errno.ENOSYS
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    attr = _MapCreateAttr(map_type, key_size, value_size, max_entries, 0)
    fd = libc.syscall(nr, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def check_bpf_syscall() -> Check:
    name = "bpf syscall"
    err = _bpf_map_create(_BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    if err == 0:
        return Check(name, True, "bpf() creates maps")
    if err in (errno.EPERM, errno.EACCES):
        return Check(name, False, f"bpf() refused: {os.strerror(err)}",
                     "run as root or with CAP_BPF (unprivileged_bpf_disabled forbids others)",
                     errors.PrivilegeError)
    return Check(name, False, f"bpf() unavailable: {os.strerror(err)}",
                 "boot a kernel built with CONFIG_BPF_SYSCALL=y", errors.BpfUnavailableError)


def check_ring_buffer() -> Check:
    name = "ring buffer"
    err = _bpf_map_create(_BPF_MAP_TYPE_RINGBUF, 0, 0, 4096 * 16)
    if err == 0:
        return Check(name, True, "BPF ring buffer maps supported")
    if err in (errno.EPERM, errno.EACCES):
        return Check(name, False, f"cannot create a ring buffer: {os.strerror(err)}",
                     "run as root or with CAP_BPF", errors.PrivilegeError)
    return Check(name, False, f"no BPF ring buffer: {os.strerror(err)}",
                 "use Linux 5.8 or newer", errors.RingBufferUnsupportedError)


def find_tracefs() -> Path | None:
    for path in TRACEFS_CANDIDATES:
        try:
            if (path / "events").is_dir():
                return path
        except PermissionError:
            continue
    return None


def _btf_raw_tracepoints() -> set[str] | None:
    """Raw tracepoint names the kernel's BTF declares (btf_trace_<name>), None if unreadable."""
    try:
        data = Path("/sys/kernel/btf/vmlinux").read_bytes()
    except OSError:
        return None
    return {m.decode() for m in re.findall(rb"btf_trace_(\w+)\0", data)}


def check_tracepoints() -> Check:
    name = "tracepoints"
    tracefs = find_tracefs()
    if tracefs is None:
        if not os.access(TRACEFS_CANDIDATES[0], os.R_OK | os.X_OK):
            # Not root (e.g. a service user with CAP_BPF and CAP_PERFMON): raw tracepoints
            # attach by name without tracefs; the kernel's BTF says whether they exist.
            found = _btf_raw_tracepoints()
            if found is not None:
                missing = [tp for tp in TRACEPOINTS if tp.split("/")[1] not in found]
                if not missing:
                    return Check(name, True, f"{', '.join(TRACEPOINTS)} (kernel BTF; "
                                 "tracefs not readable by this user)")
                return Check(name, False, f"missing tracepoints: {', '.join(missing)}",
                             "boot a kernel with CONFIG_FTRACE_SYSCALLS=y and sched "
                             "tracepoints", errors.TracepointMissingError)
            return Check(name, False, f"cannot read {TRACEFS_CANDIDATES[0]}",
                         "run as root", errors.PrivilegeError)
        return Check(name, False, "tracefs is not mounted",
                     "mount -t tracefs nodev /sys/kernel/tracing",
                     errors.TracepointMissingError)
    missing = [tp for tp in TRACEPOINTS if not (tracefs / "events" / tp).is_dir()]
    if missing:
        return Check(name, False, f"missing tracepoints: {', '.join(missing)}",
                     "boot a kernel with CONFIG_FTRACE_SYSCALLS=y and sched tracepoints",
                     errors.TracepointMissingError)
    return Check(name, True, f"{', '.join(TRACEPOINTS)} under {tracefs}")


def check_headers() -> Check:
    name = "kernel headers"
    release = platform.release()
    build = Path("/lib/modules") / release / "build"
    if (build / "include").is_dir():
        return Check(name, True, f"{build} -> {build.resolve()}")
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return Check(name, True, "in-kernel headers (/sys/kernel/kheaders.tar.xz)")
    return Check(name, False, f"no kernel headers for {release} at {build}",
                 f"apt-get install linux-headers-{release} (or run: make setup)",
                 errors.HeadersMissingError)


def check_bcc() -> Check:
    name = "bcc"
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
    except Exception as exc:  # bcc raises non-ImportError when libbcc is broken
        return Check(name, False, f"bcc does not import: {exc}",
                     "apt-get install python3-bpfcc, then make setup (links it into .venv)",
                     errors.BccMissingError)
    version = getattr(__import__("bcc.version", fromlist=["__version__"]), "__version__", "?")
    return Check(name, True, f"bcc {version}")


CAPTURE_CHECKS: tuple[Callable[[], Check], ...] = (
    check_privileges, check_bpf_syscall, check_ring_buffer, check_tracepoints,
    check_headers, check_bcc,
)


def run_capture_checks() -> list[Check]:
    return [check() for check in CAPTURE_CHECKS]


def require_capture() -> None:
    """Raise the first failed prerequisite as its CaptureError."""
    for check in CAPTURE_CHECKS:
        check().raise_if_failed()
