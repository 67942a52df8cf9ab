"""The interface every architecture implements (model/archs.py names them): training calls
`forward`, scoring calls `score_batch`, and neither knows which network it holds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .windows import Windows


@dataclass
class Scored:
    """What a network gives for one batch of windows."""
    logits: torch.Tensor                   # [B, p, V] over the target positions
    attention: torch.Tensor                # [B, rows, K] weights over the K inputs read
    features: torch.Tensor | None = None   # [B, F] what the transfer step learns from


class Network(nn.Module):
    """A network over windows: it reads the source (and `prev`, the source one window
    earlier) and gives logits for the target. Subclasses keep their module names: they
    are a trained bundle's state_dict keys."""

    def forward(self, src: torch.Tensor, prev: torch.Tensor, tgt: torch.Tensor,
                Z_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, p, V] for the target (teacher-forced) and attention weights
        [B, rows, K] (K may be 0)."""
        raise NotImplementedError

    def score_batch(self, w: Windows) -> Scored:
        """One batch of consecutive windows as scoring cuts them (rows in sequence order):
        a network may reuse what it computed for a row in the next. By default each
        window is read on its own."""
        logits, attention = self(self.tensor(w.src), self.tensor(w.prev), self.tensor(w.tgt))
        return Scored(logits, attention)

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        """An array on the network's device (a fleet server's GPU; on the CPU, no copy)."""
        return torch.from_numpy(a).to(next(self.parameters()).device)
