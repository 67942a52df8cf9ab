"""Syscall-name vocabulary: names <-> token ids, with reserved padding and unknown tokens."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

PAD, UNK = 0, 1
RESERVED = ("<pad>", "<unk>")


class Vocabulary:
    """Token ids for syscall names. Id 0 pads windows, id 1 stands for any name not seen in
    training; detection reports such names as unknown rather than guessing a neighbour."""

    def __init__(self, names: Iterable[str]):
        self.names: list[str] = list(RESERVED) + [n for n in names if n not in RESERVED]
        self.index = {n: i for i, n in enumerate(self.names)}
        if len(self.index) != len(self.names):
            raise ValueError("vocabulary has duplicate names")

    @classmethod
    def build(cls, sequences: Iterable[np.ndarray], min_count: int = 1) -> Vocabulary:
        counts: Counter[str] = Counter()
        for seq in sequences:
            counts.update(seq.tolist())
        # Most frequent first, ties by name: the same data gives the same ids.
        kept = sorted((n for n, c in counts.items() if c >= min_count),
                      key=lambda n: (-counts[n], n))
        if not kept:
            raise ValueError("no syscalls to build a vocabulary from (empty training data)")
        return cls(kept)

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, names: np.ndarray) -> np.ndarray:
        """Names (object or str array) to int64 ids; unseen names become UNK."""
        names = np.asarray(names, dtype=object)
        if names.size == 0:
            return np.zeros(0, dtype=np.int64)
        uniq, inverse = np.unique(names, return_inverse=True)
        ids = np.array([self.index.get(n, UNK) for n in uniq], dtype=np.int64)
        return ids[inverse.reshape(-1)]

    def decode(self, ids: np.ndarray) -> np.ndarray:
        table = np.array(self.names, dtype=object)
        return table[np.asarray(ids, dtype=np.int64)]

    def unknown(self, names: np.ndarray) -> list[str]:
        """The distinct names in `names` that this vocabulary does not know."""
        return sorted({n for n in np.asarray(names, dtype=object).tolist()
                       if n not in self.index})

    def to_json(self) -> list[str]:
        return list(self.names)

    @classmethod
    def from_json(cls, names: list[str]) -> Vocabulary:
        if list(names[:len(RESERVED)]) != list(RESERVED):
            raise ValueError("vocabulary does not start with the reserved tokens")
        return cls(names[len(RESERVED):])
