"""Scores of windows already seen: most windows of a host repeat, and a known window's
score is taken from here instead of the network.
"""

from __future__ import annotations

import numpy as np


class WindowCache:
    """Known-window cache: window content -> score under the current model.

    Keys are a keyed 64-bit hash of the window's tokens (a secret per daemon start). The
    table is direct-mapped (slot = key mod capacity) in two flat arrays, so a batch is
    looked up and stored with a few vector operations and the memory is fixed
    (16 bytes a slot); a window whose slot a later window took is simply scored again."""

    def __init__(self, capacity: int, width: int):
        self.capacity = max(0, capacity)
        rng = np.random.default_rng()
        self.mult = rng.integers(1, 2**63, size=width, dtype=np.uint64) * 2 + 1
        self.table = np.zeros(self.capacity, np.uint64)    # 0: empty
        self.values = np.zeros(self.capacity, np.float64)

    def keys(self, tokens: np.ndarray) -> np.ndarray:
        """[N] uint64 keys (never 0) of N windows' tokens."""
        with np.errstate(over="ignore"):
            h = (tokens.astype(np.uint64) * self.mult[None, :tokens.shape[1]]).sum(1)
            h ^= h >> np.uint64(29)
        h[h == 0] = 1
        return h

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hit mask, scores; meaningful where hit) for an array of keys."""
        if not self.capacity:
            return np.zeros(len(keys), bool), np.zeros(len(keys))
        slots = keys % np.uint64(self.capacity)
        return self.table[slots] == keys, self.values[slots]

    def store(self, keys: np.ndarray, scores: np.ndarray) -> None:
        if self.capacity and len(keys):
            slots = keys % np.uint64(self.capacity)
            self.table[slots] = keys
            self.values[slots] = scores

    def clear(self) -> None:
        self.table[:] = 0

    def __len__(self) -> int:
        return int(np.count_nonzero(self.table))
