"""Batched inference: window scores (mean negative log-likelihood of the true syscalls),
with what explains them: per-position NLL, the model's expected syscall and its
probability, and the attention weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .windows import Windows

if TYPE_CHECKING:   # torch is imported only to score with a torch network
    import torch

    from .network import Network


@dataclass
class WindowScores:
    score: np.ndarray       # [N] mean NLL over the window's real positions
    nll: np.ndarray         # [N, p] per position (0 where padding)
    expected: np.ndarray    # [N, p] the most probable token id at each position
    expected_p: np.ndarray  # [N, p] its probability
    observed_p: np.ndarray  # [N, p] the probability given to the true token
    attention: np.ndarray   # [N, p, K] weights over the K inputs read (K may be 0)
    z: np.ndarray | None = None  # [N, F] the network's features, DReAM's Z (features=True;
    #                              F = 0 for a network without)


def window_nll(logits: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from torch import nn

    nll = nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
    return nll * mask


def score(net: Network, w: Windows, batch: int = 1024, detail: bool = True,
          features: bool = False) -> WindowScores:
    """`net`: a torch Network, or an export.OnnxNetwork (scored without torch)."""
    if getattr(net, "runtime", "torch") != "torch":
        return net.score(w, batch, detail, features)
    import torch

    with torch.inference_mode():
        return _score_torch(net, w, batch, detail, features)


def _score_torch(net: Network, w: Windows, batch: int, detail: bool,
                 features: bool) -> WindowScores:
    import torch

    net.eval()
    n, p = w.tgt.shape if len(w) else (0, net.cfg.window)
    out = WindowScores(np.zeros(n, np.float32), np.zeros((n, p), np.float32),
                       np.zeros((n, p), np.int64), np.zeros((n, p), np.float32),
                       np.zeros((n, p), np.float32), np.zeros((n, p, 0), np.float32))
    attn_parts, z_parts = [], []
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        b = net.score_batch(w.take(slice(lo, hi)))  # rows in order: a network may carry state
        logits, attn = b.logits, b.attention
        if features and b.features is not None:
            z_parts.append(b.features.cpu().numpy())
        tgt = net.tensor(w.tgt[lo:hi])
        mask = net.tensor(w.mask[lo:hi])
        logp = torch.log_softmax(logits, dim=2)
        nll = -logp.gather(2, tgt.unsqueeze(2)).squeeze(2) * mask
        out.score[lo:hi] = (nll.sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
        if detail:
            out.nll[lo:hi] = nll.cpu().numpy()
            best_lp, best = logp.max(dim=2)
            out.expected[lo:hi] = best.cpu().numpy()
            out.expected_p[lo:hi] = best_lp.exp().cpu().numpy()
            out.observed_p[lo:hi] = torch.exp(-nll).cpu().numpy()
            attn_parts.append(attn.cpu().numpy())
    if detail and attn_parts:
        out.attention = np.concatenate(attn_parts)
    if features:
        out.z = np.concatenate(z_parts) if z_parts else np.zeros((n, 0), np.float32)
    return out
