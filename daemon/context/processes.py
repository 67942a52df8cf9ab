"""The process table: who each process is, from the kernel's context records.

Keyed by (tgid, start time): a pid the kernel hands to a new process is another key, so a
window is never named after a process that merely had its pid before. Each process keeps
the programs it ran (a few images, newest last) so that a window is named after the
program that made it, and its parent's key, from which the chain of ancestors is read.

The kernel describes a process at its first syscall since capture started, at each exec
and at its exit (probes/capture.bpf.c). What it does not describe (an ancestor that has
slept since capture started, or a host without BTF) is read from /proc once, checked
against the start time, and marked as such (`source` "procfs").

Bounded: at most `max_processes`; the least recently touched goes first (counted as an
eviction); exited processes are dropped `keep_exited_s` after their exit.
"""

from __future__ import annotations

import os
import pwd
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from sysdream.probes.capture import kernel_dev
from sysdream.probes.layout import (
    ARGS_LEN,
    ARGS_TRUNCATED,
    CTX_EXEC,
    CTX_EXIT,
    CTX_NEW,
    EXE_DELETED,
    EXE_FOREIGN_MNT,
    EXE_MEMFD,
    EXE_USERNS_MNT,
    EXE_WRITABLE,
    PATH_CUT,
    UNSET_ID,
)

from . import procfs
from .cgroups import CgroupPaths, Group
from .printable import command_line, printable
from .procfs import START_SLACK_NS, split_args

MAX_IMAGES = 4
MAX_PATHS = 4096
LINEAGE_DEPTH = 8
TMPFS_MAGIC = 0x01021994


# Programs that run other programs' code: for them the script (or "-c", "-m MODULE")
# says which program it is, as a web application and a one-line admin command run by the
# same python3 are not one program (the alert bound of each is fitted apart).
INTERPRETERS = re.compile(r"^(python[0-9.]*|perl[0-9.]*|ruby[0-9.]*|node(js)?|php[0-9.]*|"
                          r"bash|sh|dash|zsh|ksh|mksh|busybox)$")


def program_label(exe: str, args: list[bytes], memfd: bool = False) -> str:
    """The executable (every memfd is one program, as in the lineage profile), and for an
    interpreter its script: the first argument that is not an option, or the inline-code
    option (-c, -e) itself, or -m and its module. The arguments are the process's own
    claim; the executable is the kernel's."""
    if memfd or exe.startswith("memfd:"):
        return "memfd:*"
    if not INTERPRETERS.match(exe.rsplit("/", 1)[-1]):
        return exe
    rest = [a.decode("utf-8", "surrogateescape") for a in args[1:]]
    for i, a in enumerate(rest):
        if a in ("-c", "-e", "--eval"):
            return f"{exe} {a}"
        if a == "-m" and i + 1 < len(rest):
            return f"{exe} -m {rest[i + 1][:64]}"
        if not a.startswith("-"):
            return f"{exe} {a[:128]}"
    return exe


@dataclass(slots=True)
class Image:
    """One program a process ran (from an exec, or what it was running when first seen)."""
    since_ns: int
    exe: str                  # absolute path, "memfd:NAME" or the name when no path is known
    args: list[bytes]
    flags: int                # EXE_* | ARGS_TRUNCATED
    dev: int = 0              # kernel dev_t and inode of the executable (0: unknown)
    ino: int = 0
    fs_magic: int = 0
    uid: int = UNSET_ID
    euid: int = UNSET_ID
    gid: int = UNSET_ID
    egid: int = UNSET_ID
    by_exec: bool = False     # from an exec record (not what it ran when first seen)
    mntns: int = 0            # the process's mount namespace (inode), 0: unknown

    def exe_flags(self) -> list[str]:
        out = [name for bit, name in ((EXE_MEMFD, "memfd"), (EXE_DELETED, "deleted"),
                                      (EXE_WRITABLE, "writable_mount"),
                                      (EXE_FOREIGN_MNT, "foreign_mount"),
                                      (EXE_USERNS_MNT, "user_namespace_mount"))
               if self.flags & bit]
        if self.flags & EXE_MEMFD:      # a memfd's file system is always writable
            out = [f for f in out if f != "writable_mount"]
        if self.fs_magic == TMPFS_MAGIC and not self.flags & EXE_MEMFD:
            out.append("tmpfs")
        return out


@dataclass(slots=True)
class Process:
    tgid: int
    start_ns: int
    ppid: int = 0
    parent_start_ns: int = 0
    comm: bytes = b""
    loginuid: int = UNSET_ID
    sessionid: int = UNSET_ID
    cgroup_id: int = 0
    source: str = "kernel"
    exited_ns: int = 0
    images: list[Image] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return self.tgid, self.start_ns

    def image_at(self, ns: int, before_exec: bool = False) -> Image | None:
        """The program the process ran at kernel time `ns` (the newest when ns is 0);
        `before_exec`: the one before that (`ns` being the time of an exec)."""
        if not self.images:
            return None
        i = len(self.images) - 1
        while i > 0 and ns and self.images[i].since_ns > ns:
            i -= 1
        return self.images[i - 1 if before_exec and i > 0 else i]

    def add_image(self, img: Image) -> None:
        self.images.append(img)
        del self.images[:-MAX_IMAGES]


def _cstr(value) -> bytes:
    """A C string field: up to its first NUL (the ring buffer's space is reused, so what
    follows the NUL may be an older record's bytes)."""
    return bytes(value).split(b"\0", 1)[0]


class ProcessTable:
    def __init__(self, max_processes: int = 32768, keep_exited_s: float = 300.0,
                 cgroups: CgroupPaths | None = None, proc: str = "/proc"):
        self.max, self.keep_exited_ns = max_processes, int(keep_exited_s * 1e9)
        self.proc = proc
        self.cgroups = cgroups if cgroups is not None else CgroupPaths()
        self.entries: OrderedDict[tuple[int, int], Process] = OrderedDict()
        self.by_pid: dict[int, list[tuple[int, int]]] = {}
        self.evicted = 0
        self.expired = 0
        self.from_procfs = 0
        self.records = 0
        self.unreadable = 0
        self._users: dict[int, str] = {}
        # (dev, inode) -> the path an exec record walked: a fork (whose record has no path)
        # of a program exec'd since capture started is named by it, /proc or not
        self.paths: OrderedDict[tuple[int, int], str] = OrderedDict()
        # (dev, inode) of the programs that take this daemon's alerts (journald)
        self.delivery_exes: set[tuple[int, int]] = set()
        # the reader thread feeds the table, the scorer thread reads it for alerts
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.entries)

    def stats(self) -> ProcessStats:
        """What the metrics read at a scrape."""
        return ProcessStats(len(self.entries), self.evicted, self.from_procfs,
                            self.unreadable)

    # -- from the kernel ------------------------------------------------------------
    def ingest(self, records: np.ndarray) -> None:
        """Apply context records (probes.layout.CONTEXT_DTYPE), oldest first."""
        if not len(records):
            return
        with self._lock:
            self._ingest(records)

    def _ingest(self, records: np.ndarray) -> None:
        self.records += len(records)
        for r in records:
            try:
                self._apply(r)
            except (ValueError, OSError, UnicodeError):
                self.unreadable += 1     # never let one record stop the reader

    def _apply(self, r) -> None:
        kind = int(r["kind"])
        key = (int(r["tgid"]), int(r["start_ns"]))
        p = self.entries.get(key)
        if kind == CTX_EXIT:
            if p is not None:
                p.exited_ns = int(r["ns"])
            return
        if p is None:
            p = self._adopt_procfs(key) or Process(key[0], key[1])
            self._put(p)
        else:
            self.entries.move_to_end(key)
        p.ppid, p.parent_start_ns = int(r["ppid"]), int(r["parent_start_ns"])
        p.comm, p.cgroup_id = _cstr(r["comm"]), int(r["cgroup_id"])
        p.loginuid, p.sessionid = int(r["loginuid"]), int(r["sessionid"])
        p.source = "kernel"
        if kind == CTX_NEW and p.images and p.images[-1].ino == int(r["exe_ino"]):
            return      # described already (from /proc): keep its path
        img = self._image(r, p, kind)
        p.add_image(img)

    def _image(self, r, p: Process, kind: int) -> Image:
        flags, name = int(r["flags"]), printable(_cstr(r["exe_name"]))
        dev, ino = int(r["exe_dev"]), int(r["exe_ino"])
        img = Image(int(r["ns"]), name, split_args(bytes(r["args"])[:min(int(r["args_len"]),
                                                                      ARGS_LEN)]),
                    flags, dev, ino, int(r["exe_fs_magic"]), int(r["uid"]), int(r["euid"]),
                    int(r["gid"]), int(r["egid"]), kind == CTX_EXEC, int(r["mntns"]))
        if flags & EXE_MEMFD:
            return img                      # exe_name is "memfd:NAME": nothing more to find
        depth = int(r["path_depth"])
        if depth:       # the kernel walked the executable's dentries (exec records)
            parts = [printable(_cstr(x)) for x in r["path"][:depth][::-1]]
            img.exe = ("..." if flags & PATH_CUT else "") + "/" + "/".join(parts)
            if not flags & (EXE_DELETED | PATH_CUT) and ino:
                self.paths[(dev, ino)] = img.exe
                self.paths.move_to_end((dev, ino))
                while len(self.paths) > MAX_PATHS:
                    self.paths.popitem(last=False)
        else:
            img.exe = self._exe_path(p.tgid, _cstr(r["filename"]) if kind == CTX_EXEC
                                     else b"", dev, ino) or name
        if flags & EXE_DELETED and not img.exe.endswith(" (deleted)"):
            img.exe += " (deleted)"
        return img

    def _exe_path(self, tgid: int, filename: bytes, dev: int, ino: int) -> str:
        """The executable's path, checked to be the very file the kernel named: the
        exec's path as given (when absolute), else /proc/PID/exe; a parent's image when
        the process is a fork of it."""
        candidates = []
        if filename.startswith(b"/") and not filename.startswith((b"/dev/fd/", b"/proc/")):
            candidates.append(os.fsdecode(filename))
        candidates.append(f"{self.proc}/{tgid}/exe")
        for c in candidates:
            try:
                st = os.stat(c)
                if (kernel_dev(st.st_dev), st.st_ino) == (dev, ino):
                    path = os.readlink(c) if c.startswith(self.proc) else os.path.realpath(c)
                    return printable(path)
            except OSError:
                continue
        if (dev, ino) in self.paths:        # a program exec'd since capture started
            return self.paths[(dev, ino)]
        for key in reversed(list(self.entries)[-64:]):   # a recent fork of its parent
            q = self.entries[key]
            img = q.images[-1] if q.images else None
            if img is not None and (img.dev, img.ino) == (dev, ino) and img.exe.startswith("/"):
                return img.exe
        if filename.startswith(b"/") and not filename.startswith((b"/dev/fd/", b"/proc/")):
            return printable(filename)
        return ""

    def _put(self, p: Process) -> None:
        self.entries[p.key] = p
        keys = self.by_pid.setdefault(p.tgid, [])
        keys.append(p.key)
        keys.sort(key=lambda k: k[1])
        while len(self.entries) > self.max:
            old, _ = self.entries.popitem(last=False)
            self._unindex(old)
            self.evicted += 1

    def _unindex(self, key: tuple[int, int]) -> None:
        keys = self.by_pid.get(key[0], [])
        if key in keys:
            keys.remove(key)
        if not keys:
            self.by_pid.pop(key[0], None)

    def expire(self, now_ns: int | None = None) -> None:
        """Forget processes that exited more than keep_exited_s ago."""
        with self._lock:
            self._expire(time.monotonic_ns() if now_ns is None else now_ns)

    def _expire(self, now_ns: int) -> None:
        old = [k for k, p in self.entries.items()
               if p.exited_ns and now_ns - p.exited_ns > self.keep_exited_ns]
        for k in old:
            del self.entries[k]
            self._unindex(k)
        self.expired += len(old)

    # -- lookups --------------------------------------------------------------------
    def known_exe(self, tgid: int) -> str:
        """The newest executable the table holds for `tgid`, without reading /proc."""
        with self._lock:
            keys = self.by_pid.get(tgid)
            p = self.entries[keys[-1]] if keys else None
            return p.images[-1].exe if p is not None and p.images else ""

    def newest_image(self, tgid: int) -> tuple[str, int]:
        """(executable, since when) of the newest image the table holds for `tgid`; the
        time is -1 unless an exec made it ("", -1 when none), without reading /proc."""
        with self._lock:
            keys = self.by_pid.get(tgid)
            p = self.entries[keys[-1]] if keys else None
            if p is None or not p.images:
                return "", -1
            img = p.images[-1]
            return img.exe, (img.since_ns if img.by_exec else -1)

    def label(self, tgid: int) -> str:
        """The program `tgid` runs now as its alert bound knows it (program_label of its
        newest image), "" when the table does not know; without reading /proc."""
        with self._lock:
            keys = self.by_pid.get(tgid)
            p = self.entries[keys[-1]] if keys else None
            if p is None or not p.images:
                return ""
            img = p.images[-1]
            return program_label(img.exe, img.args, bool(img.flags & EXE_MEMFD))

    def exe_before_exec(self, tgid: int, ns: int) -> str:
        """The executable process `tgid` ran before its exec at kernel time `ns`, without
        reading /proc; "" when the table does not know."""
        with self._lock:
            keys = self.by_pid.get(tgid)
            p = self.entries[keys[-1]] if keys else None
            img = p.image_at(ns, before_exec=True) if p is not None else None
            return img.exe if img is not None else ""

    def keys(self, tgid: int) -> tuple[tuple, tuple]:
        """The newest process `tgid`'s own key (tgid, start) and its parent's
        (ppid, start); (tgid, 0) and () when the table does not know it."""
        with self._lock:
            keys = self.by_pid.get(tgid)
            p = self.entries[keys[-1]] if keys else None
            if p is None:
                return (tgid, 0), ()
            return p.key, ((p.ppid, p.parent_start_ns) if p.ppid else ())

    def delivery_peer(self, tgid: int) -> bool:
        """Whether `tgid` is a program that takes this daemon's alerts (journald, by its
        executable's device and inode), started by something else: a child it forked
        runs the same file but is not the one that takes them."""
        if not self.delivery_exes:
            return False
        with self._lock:
            keys = self.by_pid.get(tgid)
            p = self.entries[keys[-1]] if keys else None
            if p is None or not p.images or \
                    (p.images[-1].dev, p.images[-1].ino) not in self.delivery_exes:
                return False
            q = self.parent(p)
            img = q.images[-1] if q is not None and q.images else None
            return img is None or (img.dev, img.ino) not in self.delivery_exes

    def lookup(self, tgid: int, ns: int = 0) -> Process | None:
        """The process `tgid` that was running at kernel time `ns` (0: the newest)."""
        with self._lock:
            return self._lookup(tgid, ns)

    def _lookup(self, tgid: int, ns: int) -> Process | None:
        for key in reversed(self.by_pid.get(tgid, [])):
            if not ns or key[1] <= ns:
                return self.entries[key]
        p = self._from_procfs(tgid)
        if p is not None and (not ns or p.start_ns <= ns + START_SLACK_NS):
            self._put(p)
            return p
        return None

    def parent(self, p: Process) -> Process | None:
        if not p.ppid:
            return None
        q = self.entries.get((p.ppid, p.parent_start_ns))
        if q is not None:
            return q
        for key in reversed(self.by_pid.get(p.ppid, [])):   # seen through /proc
            if abs(key[1] - p.parent_start_ns) <= START_SLACK_NS:
                return self.entries[key]
        q = self._from_procfs(p.ppid)
        if q is not None and (not p.parent_start_ns
                              or abs(q.start_ns - p.parent_start_ns) <= START_SLACK_NS):
            self._put(q)
            return q
        return None

    def lineage(self, p: Process, ns: int = 0) -> list[Process]:
        """Ancestors, nearest first (at most LINEAGE_DEPTH)."""
        out, seen = [], {p.key}
        q = self.parent(p)
        while q is not None and q.key not in seen and len(out) < LINEAGE_DEPTH:
            out.append(q)
            seen.add(q.key)
            q = self.parent(q)
        return out

    # -- /proc, for what the kernel did not describe ---------------------------------
    def _adopt_procfs(self, key: tuple[int, int]) -> Process | None:
        """An entry for the same process made from /proc (start times agree): kept, so
        its path survives, and described by the kernel from now on."""
        for k in list(self.by_pid.get(key[0], [])):
            q = self.entries[k]
            if q.source == "procfs" and abs(k[1] - key[1]) <= START_SLACK_NS:
                del self.entries[k]
                self._unindex(k)
                q.start_ns = key[1]
                return q
        return None

    def _from_procfs(self, pid: int) -> Process | None:
        e = procfs.read(self.proc, pid, self.cgroups)
        if e is None:
            return None
        exe = printable(e.exe)
        flags = EXE_DELETED if exe.endswith(" (deleted)") else 0
        if exe.startswith("/memfd:"):
            exe, flags = exe[1:].removesuffix(" (deleted)"), EXE_MEMFD
        p = Process(pid, e.start_ns, e.ppid, e.parent_start_ns, e.comm, e.loginuid,
                    e.sessionid, e.cgroup_id, source="procfs")
        p.add_image(Image(e.start_ns, exe or printable(e.comm), e.args, flags, e.dev, e.ino,
                          0, e.uid, e.euid, e.gid, e.egid))
        self.from_procfs += 1
        return p

    # -- names ----------------------------------------------------------------------
    def user(self, uid: int) -> str:
        if uid == UNSET_ID:
            return ""
        if uid not in self._users:
            try:
                self._users[uid] = printable(pwd.getpwuid(uid).pw_name)
            except KeyError:
                self._users[uid] = ""
            if len(self._users) > 4096:
                self._users.pop(next(iter(self._users)))
        return self._users[uid]

    def context(self, tgid: int, ns: int = 0, before_exec: bool = False) -> dict:
        """The alert fields that say who made a window (docs/metrics.md, "Alert fields"):
        the process `tgid` at kernel time `ns`; `before_exec`: the program it ran before
        an exec at `ns` (a window that ended before it)."""
        with self._lock:
            return self._context(tgid, ns, before_exec)

    def _context(self, tgid: int, ns: int, before_exec: bool) -> dict:
        p = self._lookup(tgid, ns)
        if p is None:
            return {"exe": "", "exe_flags": [], "cmdline": "", "argv": [], "user": "",
                    "uid": -1, "euid": -1, "gid": -1, "login_user": "", "loginuid": -1,
                    "session": -1, "ppid": 0, "parent_cmdline": "", "lineage": [],
                    "lineage_text": "", "cgroup": "", "unit": "", "container_id": "",
                    "container_runtime": "", "process_start_ns": 0, "context_source": "unknown"}
        img = p.image_at(ns, before_exec) or Image(0, printable(p.comm), [], 0)
        group: Group = self.cgroups.group(p.cgroup_id)
        chain = self.lineage(p, ns)
        parent_img = chain[0].image_at(ns) if chain else None     # chain: parent first
        names = [_short(q.image_at(0).exe if q.images else printable(q.comm)) for q in chain]
        own = _short(img.exe)
        flags = img.exe_flags()
        if img.flags & ARGS_TRUNCATED:
            flags.append("args_truncated")

        def ident(v: int) -> int:
            return -1 if v == UNSET_ID else v
        return {
            "exe": img.exe, "exe_flags": flags, "cmdline": command_line(img.args),
            "argv": [printable(a) for a in img.args], "user": self.user(img.uid),
            "uid": ident(img.uid), "euid": ident(img.euid), "gid": ident(img.gid),
            "login_user": self.user(p.loginuid), "loginuid": ident(p.loginuid),
            "session": ident(p.sessionid), "ppid": p.ppid,
            "parent_cmdline": command_line(parent_img.args) if parent_img else "",
            "lineage": [{"pid": q.tgid, "exe": q.images[-1].exe if q.images else "",
                         "comm": printable(q.comm)} for q in chain],
            "lineage_text": " > ".join([*reversed(names), own]),
            "cgroup": group.path, "unit": group.unit, "container_id": group.container_id,
            "container_runtime": group.container_runtime,
            "process_start_ns": p.start_ns, "context_source": p.source,
        }


def _short(exe: str) -> str:
    return exe.removesuffix(" (deleted)").rsplit("/", 1)[-1] or exe


@dataclass(frozen=True)
class ProcessStats:
    """A snapshot of the process table: processes in it, and those evicted (the table
    full), read from /proc (the kernel had not described them) or whose context record
    could not be used, since start."""
    tracked: int
    evicted: int
    from_procfs: int
    unreadable: int
