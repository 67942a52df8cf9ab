"""Which host, which boot, which process image: the identity fields of an alert.

A SIEM correlates alerts across hosts by these: `host_id` (/etc/machine-id), `boot_id`
(a pid and a monotonic start time are only unique within one boot), `entity_id` (one
process, the same in every alert about it and distinct on every other host or boot),
`process_start` on the wall clock, and `exe_sha256`, the executable's content as
threat-intelligence feeds name it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict

from . import procfs

MAX_HASH_BYTES = 512 << 20      # larger executables are not read (an alert must not stall)
HASH_CACHE = 4096               # executables whose digests are kept


def _read_id(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return ""


HOST_ID = _read_id("/etc/machine-id")
BOOT_ID = _read_id("/proc/sys/kernel/random/boot_id")


def wall_of_monotonic(ns: int) -> float:
    """A CLOCK_MONOTONIC time (the kernel's records) on the wall clock, by the offset
    between the two clocks now (a clock set since then moves it, as it moves `date`)."""
    return (time.time_ns() - time.monotonic_ns() + ns) / 1e9


def entity_id(pid: int, start_ns: int, host_id: str = HOST_ID, boot_id: str = BOOT_ID) -> str:
    """One process for good: host, boot, pid and kernel start time hashed, so a reused
    pid, a reboot or another host's process with the same pid is another entity."""
    text = f"{host_id}:{boot_id}:{pid}:{start_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ExeDigests:
    """sha256 of executables, cached by (device, inode, mtime): a package upgrade that
    replaces a file changes the key, so a digest is never stale. Read through
    /proc/PID/exe where the process lives (the image it runs, even deleted or in another
    mount namespace), else the path."""

    def __init__(self, size: int = HASH_CACHE, max_bytes: int = MAX_HASH_BYTES):
        self.size, self.max_bytes = size, max_bytes
        self.cache: OrderedDict[tuple, tuple[str, str]] = OrderedDict()
        self.hashed = self.hits = 0
        self._lock = threading.Lock()

    def digest(self, pid: int, exe: str, start_ns: int = 0) -> tuple[str, str]:
        """(sha256 hex, "") or ("", why it could not be read). `start_ns`: the process's
        start, so that a pid reused since is not read as this process."""
        fd, why = self._open_image(pid, start_ns), ""
        if fd < 0 and exe.startswith("/"):
            try:
                fd = os.open(exe, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                why = f"the process has exited and {exe}: {exc.strerror or exc}"
        if fd < 0:
            return "", why or f"the process has exited and its executable " \
                f"({exe or 'unknown'}) is not a file path"
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            with self._lock:
                got = self.cache.get(key)
                if got is not None:
                    self.cache.move_to_end(key)
                    self.hits += 1
                    return got
            got = self._hash(fd, st.st_size)
            with self._lock:
                self.cache[key] = got
                self.hashed += 1
                while len(self.cache) > self.size:
                    self.cache.popitem(last=False)
            return got
        finally:
            os.close(fd)

    @staticmethod
    def _open_image(pid: int, start_ns: int) -> int:
        """An fd of /proc/PID/exe when PID is still the process that started at start_ns
        (checked after the open: the fd then holds that process's image), else -1."""
        if pid <= 0:
            return -1
        try:
            fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1
        if start_ns and abs(procfs.start_of(pid) - start_ns) > procfs.START_SLACK_NS:
            os.close(fd)
            return -1
        return fd

    def _hash(self, fd: int, size: int) -> tuple[str, str]:
        if size > self.max_bytes:
            return "", f"larger than {self.max_bytes >> 20} MiB, not read"
        h = hashlib.sha256()
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError as exc:
            return "", f"read failed: {exc.strerror or exc}"
        return h.hexdigest(), ""
