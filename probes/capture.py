"""Compile, attach and read sysdream's capture program (capture.bpf.c) with bcc."""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import numpy as np

from . import btf, errors, preflight
from .filters import COMM_LEN, FILTER_MAX, KERNEL_FILTERS, Filter
from .layout import (
    ACT_DTYPE,
    CONTEXT_DTYPE,
    COUNTER_FIELDS,
    DEFAULT_CHUNK,
    check_chunk,
    record_dtype,
)
from .ringbuf import RingBufferReader

CONTEXT_PAGES = 512     # the context ring buffer: 2 MiB, about 2,900 records
ACT_PAGES = 512         # the acts ring buffer: 2 MiB, about 3,100 records
SENSITIVE_MAX = 1024    # entries of the kernel's sensitive-prefix map
PROC_MNT_INIT_INO = 0xEFFFFFF8   # the initial mount namespace's inode on kernels that fix it
LPM_LEN = 128           # capture.bpf.c: bytes of a read path matched against them


class Pass(NamedTuple):
    """What one read of the rings took (Capture.read_pass)."""
    context: np.ndarray
    acts: np.ndarray
    records: np.ndarray


@dataclass(frozen=True)
class CaptureSettings:
    chunk: int = DEFAULT_CHUNK          # syscall ids per kernel record
    flush_age_s: float = 1.0            # bound on a syscall's wait in a partial chunk
    ring_buffer_pages: int = 1024       # 4 MiB with 4 KiB pages
    wake_every: int = 512               # records per CPU between reader wakeups
    strict_compat: bool = False         # each syscall's table, not each switch-in's
    context: bool = True                # process context records (needs the kernel's BTF)
    acts: bool = True                   # act records (probes/acts.py; needs `context`)
    # Path prefixes whose opens for reading are acts; None: acts.default_sensitive().
    sensitive_paths: tuple[str, ...] | None = None
    # The filters, one field per row of filters.KERNEL_FILTERS.
    include_pids: tuple[int, ...] = ()
    exclude_pids: tuple[int, ...] = ()
    include_comms: tuple[str, ...] = ()
    exclude_comms: tuple[str, ...] = ()
    include_cgroups: tuple[int, ...] = ()
    exclude_cgroups: tuple[int, ...] = ()
    exclude_uids: tuple[int, ...] = ()
    exclude_exes: tuple[str, ...] = ()   # absolute paths, matched by device and inode

    def validate(self) -> CaptureSettings:
        check_chunk(self.chunk)
        pages = self.ring_buffer_pages
        if pages < 1 or pages & (pages - 1):
            raise ValueError(f"ring_buffer_pages must be a power of two, got {pages}")
        if not 0.001 <= self.flush_age_s <= 3600:
            raise ValueError(f"flush_age_s must be between 0.001 and 3600, got {self.flush_age_s}")
        if self.wake_every < 1:
            raise ValueError(f"wake_every must be at least 1, got {self.wake_every}")
        for f in KERNEL_FILTERS:
            if len(getattr(self, f.key)) > FILTER_MAX:
                raise ValueError(f"{f.key}: at most {FILTER_MAX} entries")
        for f in KERNEL_FILTERS:
            for path in getattr(self, f.key) if f.path else ():
                if not path.startswith("/"):
                    raise ValueError(f"{f.key}: {path!r} is not an absolute path")
        if self.sensitive_paths is not None:
            if len(self.sensitive_paths) > SENSITIVE_MAX:
                raise ValueError(f"sensitive_paths: at most {SENSITIVE_MAX} entries")
            for path in self.sensitive_paths:
                if not path.startswith("/") or not 4 <= len(path.encode()) <= LPM_LEN - 1:
                    raise ValueError(f"sensitive_paths: {path!r} must be an absolute path of "
                                     f"4 to {LPM_LEN - 1} bytes")
        return self


def kernel_dev(st_dev: int) -> int:
    """A stat() device number in the kernel's own dev_t encoding (major << 20 | minor),
    the one the capture program reads from the superblock."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def exe_keys(paths: tuple[str, ...]) -> tuple[set[tuple[int, int]], list[str]]:
    """({(kernel dev, inode)} of the executables at `paths`, [paths that do not exist]).
    Symbolic links are followed: the kernel runs the file they lead to."""
    keys, missing = set(), []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            missing.append(path)
            continue
        keys.add((kernel_dev(st.st_dev), st.st_ino))
    return keys, missing


# How long a reader sleeps when the kernel does not wake it first. The kernel wakes the
# reader once per `wake_every` records per CPU, so under load reads follow the load and
# this timer only bounds the delay of a trickle. A wake is dear (a thread that has just
# woken runs the interpreter and numpy from cold caches), so a short timer costs the reader
# more CPU than the BPF programs themselves (docs/benchmarks.md, "Choices in the code";
# bench/capture.py --read-interval compares them); this one adds at most 0.1 s to the
# flush age bound.
READ_INTERVAL_S = 0.1

# The lowest CONFIG_HZ a kernel can have (x86 and arm64 both offer 100 to 1000): when
# the running kernel's HZ cannot be read, ages are counted as if it were this, so
# chunks leave early rather than late.
MIN_HZ = 100


def kernel_hz(release: str | None = None) -> tuple[int, bool]:
    """(CONFIG_HZ of the running kernel, whether it was read) from /proc/config.gz or
    /boot/config-RELEASE; (MIN_HZ, False) when neither says."""
    release = release or os.uname().release
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{release}", open)):
        try:
            with opener(path, "rt") as f:
                m = re.search(r"^CONFIG_HZ=(\d+)$", f.read(), re.M)
        except (OSError, EOFError, UnicodeDecodeError):
            continue
        if m and int(m.group(1)) > 0:
            return int(m.group(1)), True
    return MIN_HZ, False


def age_jiffies(flush_age_s: float, hz: int) -> int:
    """The age bound in whole jiffies: at most flush_age_s, plus a tick of jitter."""
    return max(1, math.floor(flush_age_s * hz))


def kernel_offsets_or_why() -> tuple[dict[str, int], str]:
    """(the OFF_* constants for capture.bpf.c, "" or why process context is unavailable)."""
    try:
        offsets = btf.kernel_offsets()
    except btf.BtfError as exc:
        return {}, f"no kernel BTF: {exc}"
    missing = [k for k in btf.REQUIRED if offsets[k] < 0]
    if missing:
        return {}, f"the kernel's BTF lacks {', '.join(missing)}"
    return offsets, ""


def initial_mount_namespace() -> int:
    """The inode of the initial mount namespace: init's (/proc/1/ns/mnt); where that is
    not readable (no CAP_SYS_PTRACE), our own when it is the fixed number newer kernels
    give the initial namespace (PROC_MNT_INIT_INO); else 0, and the program then leaves
    the foreign-namespace flags unset."""
    try:
        return os.stat("/proc/1/ns/mnt").st_ino
    except OSError:
        pass
    try:
        own = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return 0
    return own if own == PROC_MNT_INIT_INO else 0


def head_slot(path: bytes) -> int:
    """capture.bpf.c head_slot: the filter slot of a path's first 4 bytes."""
    head = int.from_bytes(path[:4], "little")
    return ((head * 2654435761) & 0xFFFFFFFF) >> 24


def bpf_source() -> bytes:
    return resources.files(__package__).joinpath("capture.bpf.c").read_bytes()


def _map_key(table, f: Filter, value):
    """The key of `value` in the BPF map of filter `f`."""
    if f.map_key == "comm":
        key = table.Key()
        key.comm = value.encode()[:COMM_LEN - 1]
        return key
    if f.map_key == "exe":
        key = table.Key()
        key.dev, key.ino = value
        return key
    return table.Key(value)


def give_back_heap() -> None:
    """bcc compiles in-process: clang and LLVM free what they used, but glibc keeps the
    freed heap mapped (tens of MB on every start). malloc_trim hands it back to the
    kernel; where the C library is not glibc there is nothing to do."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Capture:
    """The loaded capture program: attached on construction, detached by close()."""

    def __init__(self, settings: CaptureSettings | None = None):
        self.settings = (settings or CaptureSettings()).validate()
        preflight.require_capture()
        from bcc import BPF  # only after preflight: a missing bcc gets its own message

        s = self.settings
        self.hz, _ = kernel_hz()
        offsets, self.context_missing = kernel_offsets_or_why()
        self.context = s.context and not self.context_missing
        self.acts = s.acts and self.context and os.uname().machine == "x86_64"
        cflags = [f"-DCHUNK_W={s.chunk}", f"-DAGE_JIFFIES={age_jiffies(s.flush_age_s, self.hz)}",
                  f"-DRINGBUF_PAGES={s.ring_buffer_pages}", f"-DWAKE_EVERY={s.wake_every}",
                  f"-DSTRICT_COMPAT={int(s.strict_compat)}", f"-DCONTEXT={int(self.context)}",
                  f"-DCTX_PAGES={CONTEXT_PAGES}", f"-DFILTER_MAX={FILTER_MAX}",
                  f"-DEXCLUDE_EXES={int(bool(offsets))}",
                  f"-DACTS={int(self.acts)}", f"-DACT_PAGES={ACT_PAGES}",
                  f"-DINIT_MNT_NS={initial_mount_namespace()}",
                  *(f"-D{k}={v}" for k, v in offsets.items()),
                  "-Wno-unused-function"]
        log = io.StringIO()
        try:
            # bcc prints compiler and verifier output on stderr; keep it for the message.
            with contextlib.redirect_stderr(log):
                self.bpf = BPF(text=bpf_source(), cflags=cflags)
        except Exception as exc:
            # The verifier's or compiler's last words say why; keep the line short.
            why = [ln for ln in log.getvalue().splitlines() if ln and not ln.startswith(";")]
            detail = f" ({why[-2][:160]})" if len(why) >= 2 else ""
            raise errors.ProgramLoadError(
                f"the capture program failed to load: {exc}{detail}; "
                "run `sysdream doctor` for the failing prerequisite") from exc
        self.dtype = record_dtype(s.chunk)
        self._generation = 0
        self.context_reader = None
        self.acts_reader = None
        self.reader = RingBufferReader(self.bpf[b"events"].map_fd,
                                       s.ring_buffer_pages * 4096, self.dtype)
        if self.context:
            self.context_reader = RingBufferReader(self.bpf[b"procs"].map_fd,
                                                   CONTEXT_PAGES * 4096, CONTEXT_DTYPE)
        if self.acts:
            # sys_enter tail-calls note_act for the syscalls that carry acts
            import ctypes

            fn = self.bpf.load_func(b"note_act", BPF.RAW_TRACEPOINT)
            self.bpf[b"act_progs"][ctypes.c_int(0)] = ctypes.c_int(fn.fd)
            self.acts_reader = RingBufferReader(self.bpf[b"acts"].map_fd,
                                                ACT_PAGES * 4096, ACT_DTYPE)
        self.exe_keys: set[tuple[int, int]] = set()
        self.configure(s)
        give_back_heap()


    # -- filters -----------------------------------------------------------
    def configure(self, settings: CaptureSettings) -> None:
        """Load the filters of `settings` into the kernel; applies to every thread."""
        settings.validate()
        # Every filter's keys first: a refused one leaves the kernel's filters as they were.
        keys = {f.key: self._keys(f, getattr(settings, f.key)) for f in KERNEL_FILTERS}
        b = self.bpf
        for f in KERNEL_FILTERS:
            table = b[f.key.encode()]
            table.clear()
            for v in keys[f.key]:
                table[_map_key(table, f, v)] = table.Leaf(1)
        cfg_table = b[b"config"]
        cfg = cfg_table.Leaf()
        self._generation += 1
        cfg.generation = self._generation
        cfg.self_tgid = os.getpid()
        for f in KERNEL_FILTERS:
            if f.switch:
                setattr(cfg, f.switch, int(bool(keys[f.key])))
        cfg_table[cfg_table.Key(0)] = cfg
        self.settings = settings
        self.exe_keys = keys["exclude_exes"]
        if self.acts:
            self._set_sensitive(settings.sensitive_paths)

    def _set_sensitive(self, paths: tuple[str, ...] | None) -> None:
        """Load the sensitive path prefixes into the kernel's longest-prefix-match map."""
        if paths is None:
            from .acts import default_sensitive

            paths = default_sensitive()
        table = self.bpf[b"sensitive"]
        heads = self.bpf[b"sensitive_heads"]
        table.clear()
        wanted = {head_slot(p.encode()) for p in paths}
        # slots first: a prefix is in the filter before the trie, never the other way
        for i in range(256):
            if i in wanted:
                heads[heads.Key(i)] = heads.Leaf(1)
        for path in paths:
            data = path.encode()[:LPM_LEN - 1]
            key = table.Key()
            key.prefixlen = 8 * len(data)
            key.data = data
            table[key] = table.Leaf(1)
        for i in range(256):
            if i not in wanted:
                heads[heads.Key(i)] = heads.Leaf(0)
        from .acts import sensitive_tails

        tails = self.bpf[b"sensitive_tails"]
        tails.clear()
        for key in sorted(sensitive_tails(tuple(paths)))[:SENSITIVE_MAX]:
            tails[tails.Key(key)] = tails.Leaf(1)

    def _keys(self, f: Filter, values: tuple) -> tuple | set:
        """What the map of filter `f` holds for `values`: the values themselves, or for
        executables the (device, inode) of each path that exists now."""
        if f.map_key != "exe":
            return values
        found, _missing = exe_keys(values)
        if found and self.context_missing:
            raise errors.ProgramLoadError(
                f"{f.key} needs the kernel's BTF to read executables' inodes "
                f"({self.context_missing}); exclude by cgroup or uid instead")
        return found

    def exes_changed(self) -> bool:
        """Whether an excluded executable's path now leads to another file (a package
        upgrade replaces the binary): then configure() again to follow it."""
        return exe_keys(self.settings.exclude_exes)[0] != self.exe_keys

    # -- reading -----------------------------------------------------------
    def wait(self, timeout: float = READ_INTERVAL_S) -> None:
        """Sleep until the kernel wakes the reader (once per `wake_every` records per
        CPU) or `timeout` seconds pass."""
        self.reader.wait(timeout)

    def read(self, limit: int | None = None) -> np.ndarray:
        return self.reader.read(limit)

    def read_pass(self) -> Pass:
        """One pass of every ring: the chunks and acts first, then the context records.
        A process's context record is sent before its first act and chunk, so every
        process a pass's chunks or acts name is described in that pass (read the context
        first and a process born between the two reads has chunks and no description:
        a fork that exits at once is then nobody's once /proc forgets it). Apply the
        context records first."""
        records = self.read()
        acts = self.read_acts()
        return Pass(self.read_context(), acts, records)

    def read_context(self) -> np.ndarray:
        """Every process context record waiting (CONTEXT_DTYPE), oldest first. Apply them
        before the chunk records of the same pass, but read them after (read_pass)."""
        if self.context_reader is None:
            return np.empty(0, CONTEXT_DTYPE)
        return self.context_reader.read()

    def read_acts(self) -> np.ndarray:
        """Every act record waiting (layout.ACT_DTYPE), oldest first; probes/acts.py
        decodes them. Empty when acts are off (settings.acts, or no kernel BTF)."""
        if self.acts_reader is None:
            return np.empty(0, ACT_DTYPE)
        return self.acts_reader.read()

    def counters(self) -> dict[str, int]:
        """Kernel counters summed over CPUs, and `pending`: the syscalls waiting in the
        CPUs' partial chunks, read in the same copy of each CPU's slot, so that traced =
        emitted_syscalls + lost_syscalls + pending."""
        totals = dict.fromkeys(COUNTER_FIELDS, 0)
        pending = 0
        for per_cpu in self.bpf[b"slots"][0]:
            for name in COUNTER_FIELDS:
                totals[name] += getattr(per_cpu.c, name)
            pending += per_cpu.rec.count
        del totals["unwoken"]
        # Each sys_enter is counted once, in exactly one of these.
        seen = totals["filtered"] + totals["traced"] + totals["lost_nostorage"]
        return {"seen": seen, **totals, "pending": pending}

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """(run count, run time in ns) per attached BPF program, from /proc/self/fdinfo.
        The kernel counts only while kernel.bpf_stats_enabled is 1; {} when unreadable."""
        out: dict[str, tuple[int, int]] = {}
        funcs = getattr(self.bpf, "funcs", {}) if self.bpf is not None else {}
        for name, fn in funcs.items():
            try:
                with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                    info = dict(ln.split(":", 1) for ln in f.read().splitlines() if ":" in ln)
            except OSError:
                continue
            if "run_cnt" in info:
                key = name.decode() if isinstance(name, bytes) else str(name)
                out[key.removeprefix("raw_tracepoint__")] = (int(info["run_cnt"]),
                                                             int(info["run_time_ns"]))
        return out

    def close(self) -> None:
        for name in ("reader", "context_reader", "acts_reader"):
            reader = getattr(self, name, None)
            if reader is not None:
                reader.close()
        bpf = getattr(self, "bpf", None)
        if bpf is not None:
            bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
