"""Daemon test helpers: chunk records built the way the kernel lays them out, and samples of
the synthetic corpus (a uniquely named module: every test folder has a conftest)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "probes"))

from synthetic_corpus import (  # noqa: E402, F401 (re-exported for the daemon tests)
    attack_sequence,
    normal_sequence,
    quick_settings,
    tiny_config,
)

from sysdream.probes import syscalls  # noqa: E402
from sysdream.probes.layout import REC_EXIT, record_dtype  # noqa: E402


def records(tid: int, names, tgid: int | None = None, comm: str = "worker", seq0: int = 0,
            chunk: int = 64, exit: bool = False, t0: int = 1) -> np.ndarray:
    """The chunk records a thread making `names` would produce (full chunks, the rest in a
    partial one; the last flagged EXIT when `exit`)."""
    ids = syscalls.number_array(list(names), syscalls.native_arch())
    n = max(1, -(-len(ids) // chunk))
    out = np.zeros(n, record_dtype(chunk))
    for i in range(n):
        part = ids[i * chunk:(i + 1) * chunk]
        r = out[i]
        r["tid"], r["tgid"], r["seq"] = tid, tgid or tid, seq0 + i
        r["count"] = len(part)
        r["ids"][:len(part)] = part
        r["comm"] = comm.encode()
        r["first_ns"] = r["last_ns"] = t0 + i
        r["cgroup_id"] = 1
    if exit:
        out[-1]["flags"] |= REC_EXIT
    return out


def sample_normal(seed: int, n: int) -> np.ndarray:
    return normal_sequence(np.random.default_rng(seed), n)


def sample_attack(seed: int, n: int) -> np.ndarray:
    return attack_sequence(np.random.default_rng(seed), n)
