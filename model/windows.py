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


def carried(w: Windows) -> np.ndarray:
    """Rows whose `prev` is the previous row's source (the first row never: its previous
    row is not in the batch); DReAM's scoring reuses that row's Z for them."""
    out = np.zeros(len(w), bool)
    if len(w) > 1:
        out[1:] = (~w.first[1:]) & (w.seq[1:] == w.seq[:-1]) & \
            (w.prev[1:] == w.src[:-1]).all(axis=1)
    return out


@dataclass(frozen=True)
class Geometry:
    """A model's window geometry, and the one place its arithmetic lives.

    A *span* is what one window needs of its thread: `lead` syscalls before the target
    (the context and the previous source for predict-next, the previous source for
    reconstruct) followed by the `window` syscalls of the target. The daemon cuts spans
    from live threads, the fleet server receives them; `windows()` turns spans into
    the model's Windows the same way for both."""
    window: int
    stride: int
    task: str

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.window < 1 or self.stride < 1:
            raise ValueError("window length and stride must be at least 1")

    @classmethod
    def of(cls, cfg) -> Geometry:
        """The geometry of a model configuration (anything with window, stride, task)."""
        return cls(cfg.window, cfg.stride, cfg.task)

    @property
    def lead(self) -> int:
        return 2 * self.window if self.task == "predict-next" else self.window

    @property
    def span(self) -> int:
        return self.lead + self.window

    def windows(self, spans: np.ndarray, valid: np.ndarray, starts: np.ndarray,
                seq: np.ndarray | None = None) -> Windows:
        """Windows of spans [N, span] of token ids whose targets hold `valid` [N] real
        tokens (the rest padding) and begin `starts` [N] tokens into their thread."""
        p = self.window
        spans = np.asarray(spans, np.int64)
        mask = np.arange(p)[None, :] < np.asarray(valid)[:, None]
        tgt = np.where(mask, spans[:, self.lead:], 0)
        src = spans[:, p:2 * p] if self.task == "predict-next" else tgt
        starts = np.asarray(starts, np.int64)
        seq = np.zeros(len(spans), np.int64) if seq is None else np.asarray(seq, np.int64)
        return Windows(np.ascontiguousarray(src), np.ascontiguousarray(spans[:, :p]),
                       np.ascontiguousarray(tgt), mask, starts == 0, starts, seq)


COND_UNKNOWN = "@?"     # the condition of a program the model was not trained with
COND_DROPOUT = 0.1      # share of training windows given it instead of their own
MIN_COND_WINDOWS = 500  # a program with fewer windows' worth of syscalls trains as it


def condition_name(label: str) -> str:
    """A program's token for a conditioned model (COND_UNKNOWN for "", one not known)."""
    return f"@{label}" if label else COND_UNKNOWN


def condition(w: Windows, ids: np.ndarray) -> Windows:
    """Windows whose context is headed by a condition token (`ids`, one per window): the
    first position of the source and of the previous source, so a window scored alone
    and one whose previous source is reused read the same (predict-next only)."""
    ids = np.asarray(ids, np.int64)
    src, prev = w.src.copy(), w.prev.copy()
    src[:, 0] = prev[:, 0] = ids
    return Windows(src, prev, w.tgt, w.mask, w.first, w.start, w.seq)


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


@dataclass
class Holdout:
    """One set of sequences split by blocks of windows, each part cut with its real context."""
    fit: Windows         # training targets (at the training stride)
    validation: Windows  # early-stopping targets (at the window length)
    calibration: Windows # calibration targets (at the scoring stride)
    blocks: tuple[int, int, int]  # blocks in each part: fit, validation, calibration
    block: int                    # windows per block


def holdout(sequences: list[np.ndarray], p: int, s: int, train_stride: int, task: str,
            calib_fraction: float, val_fraction: float, seed: int, block: int = 10) -> Holdout:
    """Split sequences by blocks of `block` windows (block * p syscalls), not by sequence.

    A host's learning recording often has threads of which there is only one (a service's
    main thread, the thread that starts the workers): a split by sequence holds some of them
    out whole and the model never learns them. Here every sequence is cut into blocks and a
    seeded share of all blocks goes to calibration and to validation, ranked by one draw per
    block; a sequence of two blocks or more keeps at least one for training. Windows are cut
    from the whole sequence, so a held-out window reads the syscalls really before it, as
    the daemon's windows do; a window goes to a part only when every real token of its
    target lies in that part's blocks (windows that straddle a boundary are dropped)."""
    rng = np.random.default_rng(seed)
    span = block * p
    nblocks = [-(-len(t) // span) for t in sequences]
    draw = rng.random(sum(nblocks))
    rank = np.empty(len(draw), np.int64)
    rank[np.argsort(draw, kind="stable")] = np.arange(len(draw))
    n_cal = max(1, int(round(len(draw) * calib_fraction))) if len(draw) >= 2 else 0
    n_val = max(1, int(round(len(draw) * val_fraction))) if len(draw) >= 3 else 0
    part = np.where(rank < n_cal, 2, np.where(rank < n_cal + n_val, 1, 0)).astype(np.int8)
    at = np.cumsum([0] + nblocks)
    for i, nb in enumerate(nblocks):  # keep a block of every multi-block sequence learnt
        mine = part[at[i]:at[i + 1]]
        if nb >= 2 and mine.all():
            mine[np.argmax(draw[at[i]:at[i + 1]])] = 0
    # one flat array of every token's part; each sequence starts at `first`
    flat = np.concatenate([np.repeat(part[at[i]:at[i + 1]], span)[:len(t)]
                           for i, t in enumerate(sequences)] or [np.zeros(0, np.int8)])
    first = np.cumsum([0] + [len(t) for t in sequences])

    def select(stride: int, want: int) -> Windows:
        w = cut_many(sequences, p, stride, task)
        pos = np.minimum(first[w.seq, None] + w.start[:, None] + np.arange(p),
                         first[w.seq + 1, None] - 1)  # padding past the end: masked below
        lab = np.where(w.mask, flat[pos], want)
        return w.take(np.all(lab == want, axis=1))

    counts = tuple(int((part == k).sum()) for k in (0, 1, 2))
    return Holdout(select(min(train_stride, p), 0), select(p, 1), select(s, 2), counts,
                   block)
