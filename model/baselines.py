"""Baselines the evaluation runs beside the neural models, on the same windows:

- stide (Forrest et al., Hofmeyr et al.): the set of normal n-grams (n = 6); a syscall is a
  mismatch when the n-gram ending at it was never seen; its locality frame count is the
  number of mismatches among the last 20 syscalls. Window score: the window's largest
  locality frame count divided by the frame (0..1).
- n-gram language model (n = 4) with interpolated absolute discounting (Ney et al.):
  window score is the mean negative log-likelihood, like the neural models'.
- DeepLog-style LSTM (Du et al. 2017): the previous 10 syscalls predict the next through a
  2-layer LSTM of 64 units; a syscall is a miss when it is not among the g = 9 most likely.
  Window score: the fraction of misses (DeepLog's own verdict: any miss is anomalous).
- sequence covering, in the manner of Marteau 2019 (SC4ID): a sequence is covered left to
  right by the longest pieces (at most 20 syscalls) that occur in normal data; a syscall
  scores 1 where a piece starts. Window score: the fraction of its syscalls that start a
  piece (normal activity is covered by a few long pieces, an attack by many short ones).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .vocab import PAD


def _grams(tokens: np.ndarray, n: int, base: int) -> np.ndarray:
    """Integer code of the n-gram ending at each position (left-padded with PAD)."""
    t = np.concatenate([np.full(n - 1, PAD, np.int64), np.asarray(tokens, np.int64)])
    code = np.zeros(len(tokens), np.int64)
    for j in range(n):
        code = code * base + t[j:j + len(tokens)]
    return code


def _window_reduce(per_token: np.ndarray, p: int, s: int, how: str) -> np.ndarray:
    """Per-token values reduced over the same windows the neural models score."""
    from .windows import count

    n = len(per_token)
    k = count(n, p, s)
    starts = np.unique(np.minimum(np.arange(k) * s, max(n - p, 0)))
    padded = np.concatenate([per_token, np.full(p, np.nan)])  # a short sequence's tail
    view = np.lib.stride_tricks.sliding_window_view(padded, p)[starts]
    return np.nanmax(view, 1) if how == "max" else np.nanmean(view, 1)


class Stide:
    name = "stide"

    def __init__(self, vocab_size: int, n: int = 6, frame: int = 20):
        self.n, self.frame, self.base = n, frame, vocab_size + 1
        self.known = np.zeros(0, np.int64)

    def fit(self, sequences: list[np.ndarray]) -> Stide:
        codes = [_grams(s, self.n, self.base) for s in sequences if len(s)]
        self.known = np.unique(np.concatenate(codes)) if codes else self.known
        return self

    def token_scores(self, tokens: np.ndarray) -> np.ndarray:
        miss = ~_member(_grams(tokens, self.n, self.base), self.known)
        c = np.concatenate([[0], np.cumsum(miss)])
        idx = np.arange(1, len(tokens) + 1)
        lfc = c[idx] - c[np.maximum(idx - self.frame, 0)]
        return lfc / self.frame

    def window_scores(self, tokens: np.ndarray, p: int, s: int) -> np.ndarray:
        return _window_reduce(self.token_scores(tokens), p, s, "max")


_HASH = (1 << 47) - 115     # a prime: gram hashes times a vocabulary below 2^16 fit int64


def _gram_hashes(tokens: np.ndarray, longest: int, base: int) -> list[np.ndarray]:
    """For n = 1..longest, a hash of the n-gram ending at each position (positions before
    n - 1 hold -1: no gram ends there)."""
    t = np.asarray(tokens, np.int64)
    out, h = [], t.copy()
    for n in range(1, longest + 1):
        if n > 1:
            h = np.r_[np.full(1, -1, np.int64), (h[:-1] * base + t[1:]) % _HASH]
            h[:n - 1] = -1
        out.append(h)
    return out


def _member(x: np.ndarray, known: np.ndarray) -> np.ndarray:
    """x in `known` (sorted, unique), by binary search: np.isin sorts `known` again on
    every call, which dominates when it is large and x is one short trace."""
    if not len(known):
        return np.zeros(len(x), bool)
    i = np.minimum(np.searchsorted(known, x), len(known) - 1)
    return known[i] == x


class SequenceCovering:
    name = "covering"

    def __init__(self, vocab_size: int, longest: int = 20):
        self.base, self.longest = vocab_size + 1, longest
        self.known: list[np.ndarray] = []

    def fit(self, sequences: list[np.ndarray]) -> SequenceCovering:
        per_n: list[list[np.ndarray]] = [[] for _ in range(self.longest)]
        for s in sequences:
            for n, h in enumerate(_gram_hashes(s, self.longest, self.base)):
                per_n[n].append(h[h >= 0])
        self.known = [np.unique(np.concatenate(x)) if x else np.zeros(0, np.int64)
                      for x in per_n]
        return self

    def piece_lengths(self, tokens: np.ndarray) -> np.ndarray:
        """The longest piece seen in normal data that starts at each position (0 for a
        syscall never seen); pieces are prefix-closed, so lengths count up from 1."""
        m = len(tokens)
        length = np.zeros(m, np.int64)
        alive = np.ones(m, bool)
        for n, h in enumerate(_gram_hashes(tokens, self.longest, self.base), start=1):
            if n > m:
                break
            start_ok = np.zeros(m, bool)   # the n-gram starting at i ends at i + n - 1
            start_ok[:m - n + 1] = _member(h[n - 1:], self.known[n - 1])
            alive &= start_ok
            if not alive.any():
                break
            length += alive
        return length

    def token_scores(self, tokens: np.ndarray) -> np.ndarray:
        length = self.piece_lengths(tokens)
        starts = np.zeros(len(tokens))
        i = 0
        while i < len(tokens):           # greedy: the longest piece at each step
            starts[i] = 1.0
            i += max(int(length[i]), 1)
        return starts

    def window_scores(self, tokens: np.ndarray, p: int, s: int) -> np.ndarray:
        return _window_reduce(self.token_scores(tokens), p, s, "mean")


class NGram:
    name = "n-gram"

    def __init__(self, vocab_size: int, n: int = 4, discount: float = 0.75):
        self.n, self.d, self.V, self.base = n, discount, vocab_size, vocab_size + 1
        self.tables: list[tuple] = []

    def fit(self, sequences: list[np.ndarray]) -> NGram:
        seqs = [np.asarray(s, np.int64) for s in sequences if len(s)]
        self.tables = []
        for order in range(1, self.n + 1):
            full = np.concatenate([_grams(s, order, self.base) for s in seqs])
            ctx = full // self.base
            g, gc = np.unique(full, return_counts=True)
            c, cc = np.unique(ctx, return_counts=True)            # context counts
            gctx = g // self.base
            c_types = np.bincount(np.searchsorted(c, gctx), minlength=len(c))  # N1+(h .)
            self.tables.append((g, gc, c, cc, c_types))
        return self

    def token_nll(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, np.int64)
        prob = np.full(len(tokens), 1.0 / self.V)
        for order in range(1, self.n + 1):
            g, gc, c, cc, c_types = self.tables[order - 1]
            full = _grams(tokens, order, self.base)
            ctx = full // self.base
            ci = np.clip(np.searchsorted(c, ctx), 0, len(c) - 1)
            seen_ctx = c[ci] == ctx
            gi = np.clip(np.searchsorted(g, full), 0, len(g) - 1)
            cnt = np.where(g[gi] == full, gc[gi], 0)
            total = np.where(seen_ctx, cc[ci], 1)
            lam = np.where(seen_ctx, self.d * c_types[ci] / total, 1.0)
            higher = np.maximum(cnt - self.d, 0) / total
            prob = np.where(seen_ctx, higher + lam * prob, prob)
        return -np.log(np.maximum(prob, 1e-12))

    def window_scores(self, tokens: np.ndarray, p: int, s: int) -> np.ndarray:
        return _window_reduce(self.token_nll(tokens), p, s, "mean")


class _DeepLogNet(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden, padding_idx=PAD)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, x):
        h, _ = self.lstm(self.embed(x))
        return self.out(h[:, -1])


class DeepLog:
    name = "DeepLog"

    def __init__(self, vocab_size: int, history: int = 10, hidden: int = 64, layers: int = 2,
                 top_g: int = 9, epochs: int = 4, seed: int = 0, batch: int = 256):
        self.V, self.h, self.g, self.epochs, self.seed, self.batch = \
            vocab_size, history, top_g, epochs, seed, batch
        torch.manual_seed(seed)
        self.net = _DeepLogNet(vocab_size, hidden, layers)

    def _samples(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.concatenate([np.full(self.h, PAD, np.int64), np.asarray(tokens, np.int64)])
        idx = np.arange(len(tokens))[:, None] + np.arange(self.h)
        return t[idx], np.asarray(tokens, np.int64)

    def fit(self, sequences: list[np.ndarray], max_samples: int = 150_000) -> DeepLog:
        xs, ys = zip(*(self._samples(s) for s in sequences if len(s)), strict=True)
        x, y = np.concatenate(xs), np.concatenate(ys)
        rng = np.random.default_rng(self.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=3e-3)
        self.net.train()
        for _ in range(self.epochs):
            order = rng.permutation(len(x))[:max_samples]
            for lo in range(0, len(order), self.batch):
                i = order[lo:lo + self.batch]
                loss = nn.functional.cross_entropy(self.net(torch.from_numpy(x[i])),
                                                   torch.from_numpy(y[i]))
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net.eval()
        return self

    @torch.inference_mode()
    def token_miss(self, tokens: np.ndarray, batch: int = 4096) -> np.ndarray:
        x, y = self._samples(tokens)
        miss = np.zeros(len(y), np.float64)
        for lo in range(0, len(y), batch):
            logits = self.net(torch.from_numpy(x[lo:lo + batch]))
            top = logits.topk(min(self.g, self.V), dim=1).indices.numpy()
            miss[lo:lo + batch] = ~(top == y[lo:lo + batch, None]).any(axis=1)
        return miss

    def window_scores(self, tokens: np.ndarray, p: int, s: int) -> np.ndarray:
        return _window_reduce(self.token_miss(tokens), p, s, "mean")
