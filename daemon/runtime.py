"""Adapting torch to the service's sandbox.

systemd's MemoryDenyWriteExecute=yes (and prctl PR_SET_MDWE) refuse writable+executable
memory. oneDNN, torch's fast CPU path for the LSTM, generates code at run time and fails
there ("could not create a primitive"); torch's own kernels work. So: probe once, and
without W+X memory run torch without oneDNN (measured here: 22k instead of 36k windows/s
at batch 512; the known-window cache absorbs most of the difference).
"""

from __future__ import annotations

import mmap


def wx_memory_allowed() -> bool:
    try:
        m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, PermissionError):
        return False
    m.close()
    return True


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
