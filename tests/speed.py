"""The test suite's sense of this machine's speed: timeouts are written for the developers'
machine and stretched on a slower one (a slower syscall path, other work beside the tests),
by a ratio measured once per session."""

from __future__ import annotations

import os
import time

# How long a fixed mix of interpreter work and syscalls (`_speed_probe`) takes on the
# developers' machine, unloaded. A machine slower than that (a slower syscall path, other
# work beside the tests) gets every wait stretched by the ratio, measured once per session.
SPEED_REFERENCE_S = 0.2
MAX_SLOWNESS = 5.0
_slowness: list[float] = []


def _speed_probe() -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(300_000):
        x += i * i % 7
    for _ in range(100_000):
        os.getppid()
    return time.perf_counter() - t0


def slowness() -> float:
    """This machine's time for the probe against the reference (best of three, at least 1,
    at most MAX_SLOWNESS); the timeouts of wait_for are multiplied by it."""
    if not _slowness:
        _slowness.append(min(max(min(_speed_probe() for _ in range(3)) / SPEED_REFERENCE_S,
                                 1.0), MAX_SLOWNESS))
    return _slowness[0]


def scaled(seconds: float) -> float:
    """A timeout written for the developers' machine, for this one."""
    return seconds * slowness()
