"""Small synthetic syscall languages: fast enough to train on in a test."""

from __future__ import annotations

import numpy as np

from sysdream.model.config import NetworkConfig, TrainSettings

NORMAL_LOOP = ["openat", "fstat", "read", "read", "close", "mmap", "write", "munmap"]


def normal_sequence(rng: np.random.Generator, n: int) -> np.ndarray:
    """A program that loops over a file-processing pattern, sometimes skipping the mmap
    pair: deterministic enough to learn in seconds, varied enough to calibrate on."""
    out: list[str] = []
    while len(out) < n:
        loop = list(NORMAL_LOOP)
        if rng.random() < 0.3:
            loop = [c for c in loop if c not in ("mmap", "munmap")]
        out.extend(loop)
    return np.array(out[:n], dtype=object)


def attack_sequence(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal start, then a shell: clone, execve, socket, connect, dup2 ..."""
    seq = normal_sequence(rng, n).tolist()
    payload = ["clone", "execve", "socket", "connect", "dup2", "dup2", "execve", "read",
               "write", "socket"]
    k = n // 2
    for i in range(k, min(n, k + 3 * len(payload))):
        seq[i] = payload[(i - k) % len(payload)]
    return np.array(seq, dtype=object)


def tiny_config(**kw) -> NetworkConfig:
    base = dict(vocab_size=1, window=8, stride=8, embed_dim=8, hidden=8, attn_dim=8)
    return NetworkConfig(**{**base, **kw}).validate()


def quick_settings(**kw) -> TrainSettings:
    return TrainSettings(**{**dict(epochs=6, patience=2, batch=32, lr=1e-2, train_stride=2,
                                   threads=1), **kw})


# Two programs run the same long loop and differ at its end: one writes the result to a
# file, the other sends it. The window's context (8 syscalls) holds only the common part
# when the last call comes, so only the program can say which is normal.
LOOP_COMMON = ["openat", "fstat", "read", "read", "read", "mmap", "munmap", "lseek", "read",
               "close"]


def program_loop(rng: np.random.Generator, n: int, last: str) -> np.ndarray:
    out: list[str] = []
    while len(out) < n:
        out += [c for c in LOOP_COMMON if c != "lseek" or rng.random() < 0.7] + [last]
    return np.array(out[:n], dtype=object)
