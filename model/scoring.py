"""Batched inference: window scores (mean negative log-likelihood of the true syscalls),
with what explains them: per-position NLL, the model's expected syscall and its
probability, and the attention weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .windows import Windows


@dataclass
class WindowScores:
    score: np.ndarray       # [N] mean NLL over the window's real positions
    nll: np.ndarray         # [N, p] per position (0 where padding)
    expected: np.ndarray    # [N, p] the most probable token id at each position
    expected_p: np.ndarray  # [N, p] its probability
    observed_p: np.ndarray  # [N, p] the probability given to the true token
    attention: np.ndarray   # [N, p, K] weights over the K inputs read (K may be 0)
    z: np.ndarray | None = None  # [N, 2H] DReAM's attention vector Z (features=True)


def build(cfg) -> nn.Module:
    from .attention import EventModel
    from .dream import DReAM

    return DReAM(cfg) if cfg.arch == "dream" else EventModel(cfg)


def window_nll(logits: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
    return nll * mask


def _carried(w: Windows) -> np.ndarray:
    """Windows whose `prev` is the previous row's source: DReAM reuses that row's Z."""
    out = np.zeros(len(w), bool)
    if len(w) > 1:
        out[1:] = (~w.first[1:]) & (w.seq[1:] == w.seq[:-1]) & \
            (w.prev[1:] == w.src[:-1]).all(axis=1)
    return out


@torch.inference_mode()
def score(net: nn.Module, w: Windows, batch: int = 1024, detail: bool = True,
          features: bool = False) -> WindowScores:
    net.eval()
    n, p = w.tgt.shape if len(w) else (0, net.cfg.window)
    out = WindowScores(np.zeros(n, np.float32), np.zeros((n, p), np.float32),
                       np.zeros((n, p), np.int64), np.zeros((n, p), np.float32),
                       np.zeros((n, p), np.float32), np.zeros((n, p, 0), np.float32))
    attn_parts, z_parts = [], []
    carried = _carried(w) if getattr(net, "encode", None) else None
    # the net's device (a fleet server's GPU); on the CPU .to() and .cpu() are no-ops
    dev = next(net.parameters()).device

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(dev)

    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        src = put(w.src[lo:hi])
        tgt = put(w.tgt[lo:hi])
        mask = put(w.mask[lo:hi])
        if carried is not None:
            Z, s, final = net.encode(src)
            Z_prev = torch.empty_like(Z)
            c = put(carried[lo:hi].copy())
            c[0] = False  # the previous row sits in the last batch
            Z_prev[1:][c[1:]] = Z[:-1][c[1:]]
            if (~c).any():
                Z_prev[~c] = net.encode(put(w.prev[lo:hi])[~c])[0]
            dec_in = torch.cat([net.start_tokens(src), tgt[:, :-1]], 1)
            logits = net.decode(Z, Z_prev, final, dec_in)
            attn = s.unsqueeze(1)
            if features:
                z_parts.append(Z.cpu().numpy())
        else:
            logits, attn = net(src, put(w.prev[lo:hi]), tgt)
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
