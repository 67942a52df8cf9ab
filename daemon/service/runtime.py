"""Adapting the process to the service: torch in the sandbox, memory after start-up,
the trainer child's place under it.

systemd's MemoryDenyWriteExecute=yes (and prctl PR_SET_MDWE) refuse writable+executable
memory. oneDNN, torch's fast CPU path for the LSTM, generates code at run time and fails
there ("could not create a primitive"); torch's own kernels work. So: probe once, and
without W+X memory run torch without oneDNN (slower: docs/benchmarks.md, "Choices in the
code"; the known-window cache absorbs most of the difference).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import signal

ONEDNN_CACHE = "64"


def bound_torch_caches() -> None:
    """Before torch is imported: oneDNN keeps up to 1024 compiled primitives, one per
    input shape, each with its buffers. Batches of every size made that cache grow (tens
    of MB at 1M syscalls/s); the scorer pads its batches to a few sizes
    (detect/scorer.py `_padded`), whose primitives this capacity holds (an explicit
    ONEDNN_PRIMITIVE_CACHE_CAPACITY in the environment wins)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)


def wx_memory_allowed() -> bool:
    try:
        m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, PermissionError):
        return False
    m.close()
    return True


_torch_ready: list[bool] = []


def prepare_torch(threads: int, log=None) -> None:
    """The first time a model scores with torch (a bundle without the ONNX export, or
    onnxruntime missing): its thread count and, without W+X memory, no oneDNN. A daemon
    whose models all score with ONNX Runtime never imports torch."""
    if _torch_ready:
        return
    import torch  # bound_torch_caches() ran at start, before any import of torch

    torch.set_num_threads(threads)
    adapt_torch(log)
    _torch_ready.append(True)


def adapt_torch(log=None) -> bool:
    """Disable oneDNN when W+X memory is refused; True when it was disabled."""
    if wx_memory_allowed():
        return False
    import torch

    torch.backends.mkldnn.enabled = False
    if log:
        log("writable+executable memory is refused here (MemoryDenyWriteExecute): "
            "running torch without oneDNN")
    return True


class Terminated(KeyboardInterrupt):
    """SIGTERM outside on_signals: stops like Ctrl-C (the same clean-ups run) but is a
    requested stop, so the command exits 0 where Ctrl-C exits 130."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


# The signal that stopped a command through on_signals (None: none did). The CLI exits
# 130 after a clean stop by SIGINT (the shell's convention for Ctrl-C), 0 after SIGTERM.
stopped_by: int | None = None


def _stopping(signum: int, stop) -> None:
    global stopped_by
    stopped_by = signum
    stop()


def on_signals(stop, reload=None) -> dict:
    """The long-running commands' signals, in one place: SIGTERM and SIGINT call `stop`,
    SIGHUP calls `reload` when given. Handlers only set a flag the loop checks, so a
    signal never lands in the middle of a write. A SIGINT ignored on entry (a background
    job of a shell) stays ignored. Returns the handlers replaced, for restore_signals."""
    wanted = {signal.SIGTERM: stop}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        wanted[signal.SIGINT] = stop
    handlers = {sig: (lambda signum, _, f=f: _stopping(signum, f)) for sig, f in wanted.items()}
    if reload is not None:
        handlers[signal.SIGHUP] = lambda *_: reload()
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}


def restore_signals(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)


MADV_PAGEOUT = 21  # Linux 5.4
COMPILER_LIBRARIES = ("libLLVM", "libclang")


def release_memory() -> int:
    """After the BPF program is compiled and attached: hand the C heap's free pages back
    to the kernel (glibc malloc_trim; the compile leaves freed heap behind) and page out
    the compiler's code (libLLVM and libclang, resident after the compile), which the
    daemon does not run again: a later compile would read it back from the page cache.
    Returns the bytes of compiler mappings advised out."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return 0
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or not any(lib in parts[5] for lib in COMPILER_LIBRARIES):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
            advised += hi - lo
    return advised


def trainer_child(nice: int):
    """A preexec function for a trainer child: at `nice` and SCHED_IDLE, so detection
    keeps the CPU, and killed with its parent (PR_SET_PDEATHSIG), so a daemon killed by
    SIGKILL leaves no trainer behind to write a model it will not load."""
    def setup() -> None:
        os.nice(nice)
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError):
            pass
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)    # PR_SET_PDEATHSIG, SIGKILL
    return setup
