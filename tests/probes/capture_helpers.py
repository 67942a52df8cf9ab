"""Reading a live capture in tests: both ring buffers, the way the daemon does."""

from __future__ import annotations

import time

import numpy as np


def drain(cap, until, timeout: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """(context records, chunk records) read until `until()` holds (or the timeout), then
    a short drain for what was still in flight."""
    ctx, recs = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cap.wait(0.02)
        ctx.append(cap.read_context())
        recs.append(cap.read())
        if until():
            break
    for _ in range(5):
        cap.wait(0.02)
        ctx.append(cap.read_context())
        recs.append(cap.read())
    return np.concatenate(ctx), np.concatenate(recs)
