"""Cutting a thread's token sequence into model windows.

A window is a *target* of p consecutive syscalls that the model scores, plus what the model
may read: for `predict-next` the p syscalls just before the target (the context), for
`reconstruct` the target itself. Windows start every s syscalls (the stride); a sequence
shorter than p still gives one window, padded. Each window also carries `prev`, the p
syscalls just before its source (what the model read for the window one window length
earlier), so DReAM's Z_{t-1} means the same whatever the stride, and can be computed for
any window in isolation, as the daemon needs. With s = p, `prev` is the previous window's
source and scoring reuses its Z. Syscalls before the sequence's start are padding.

Every token of a sequence lies in at least one target when s <= p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocab import PAD

TASKS = ("predict-next", "reconstruct")


@dataclass
class Windows:
    src: np.ndarray     # [N, p] what the encoder reads
    prev: np.ndarray    # [N, p] what it read one window earlier (PAD for a thread's first)
    tgt: np.ndarray     # [N, p] the tokens scored
    mask: np.ndarray    # [N, p] bool: target position holds a real token
    first: np.ndarray   # [N] bool: first window of its sequence
    start: np.ndarray   # [N] offset of the target's first token in its sequence
    seq: np.ndarray     # [N] index of the sequence the window came from

    def __len__(self) -> int:
        return len(self.tgt)

    def take(self, index) -> Windows:
        return Windows(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def count(n: int, p: int, s: int) -> int:
    """Windows cut from a sequence of n tokens."""
    return max(1, -(-max(n - p, 0) // s) + 1) if n else 0


def cut(tokens: np.ndarray, p: int, s: int, task: str, seq: int = 0) -> Windows:
    """Windows of one token-id sequence, targets starting at 0, s, 2s, ... until the last
    target reaches the end (the last one may overlap its predecessor by more than p - s)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if p < 1 or s < 1:
        raise ValueError("window length and stride must be at least 1")
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    k = count(n, p, s)
    starts = np.minimum(np.arange(k) * s, max(n - p, 0))
    if k > 1:  # keep the final window aligned to the end without repeating one
        starts = np.unique(starts)
        k = len(starts)
    lead = 2 * p  # padding in front so every context index is valid
    padded = np.concatenate([np.full(lead, PAD, np.int64), tokens,
                             np.full(p, PAD, np.int64)])
    off = starts + lead
    cols = np.arange(p)
    tgt = padded[off[:, None] + cols]
    mask = (starts[:, None] + cols) < n
    if task == "predict-next":
        src = padded[off[:, None] - p + cols]
        prev = padded[off[:, None] - 2 * p + cols]
    else:
        src = tgt
        prev = padded[off[:, None] - p + cols]
    first = np.zeros(k, bool)
    first[:1] = True
    return Windows(src, prev, tgt, mask, first, starts, np.full(k, seq, np.int64))


def cut_many(sequences: list[np.ndarray], p: int, s: int, task: str) -> Windows:
    parts = [cut(t, p, s, task, i) for i, t in enumerate(sequences) if len(t)]
    if not parts:
        e = np.zeros((0, p), np.int64)
        z = np.zeros(0, np.int64)
        return Windows(e, e, e, e.astype(bool), z.astype(bool), z, z)
    return Windows(*(np.concatenate([getattr(w, f) for w in parts])
                     for f in Windows.__dataclass_fields__))
