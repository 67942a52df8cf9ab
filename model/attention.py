"""Next-token event models with the attention mechanisms of Brown, Tuor, Hutchinson and
Nichols (2018), adapted from log lines to syscall windows.

All read the context window followed by the target window and predict each target syscall
from what came before it (BEM also from what comes after it, inside the window).

  em          LSTM language model, output from h_t
  bem         bidirectional: forward state before t and backward state after t
  fixed       attention over h_1..h_t with one learned query for every position
  syntax      one learned query per position
  semantic1   the query is computed from the current state h_t; output from the
              attention result a_t
  semantic2   as semantic1, output from [h_t; a_t]
  tiered      an upper-tier LSTM runs over the thread's previous and current source windows
              (each summarised by a lower-tier LSTM); its state conditions the lower-tier
              model of the target window
  tiered-attention  tiered, with semantic2 attention in the lower tier

One class per architecture (model/archs.py maps the names to them), sharing the embedding,
the causal attention module and the output layer through `EventModel`. Attention weights
over earlier positions come out with every prediction: they say which syscalls drove it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import NetworkConfig
from .network import Network
from .vocab import PAD


class CausalAttention(nn.Module):
    """Attention over h_1..h_t at each position t; `kind` says where the query comes from:
    "fixed" one learned query, "syntax" one per position, "semantic" from h_t."""

    def __init__(self, kind: str, dim: int, attn_dim: int, length: int):
        super().__init__()
        self.kind = kind
        self.keys = nn.Linear(dim, attn_dim)
        if kind == "fixed":
            self.query = nn.Parameter(torch.randn(attn_dim) / attn_dim ** 0.5)
        elif kind == "syntax":
            self.query = nn.Parameter(torch.randn(length, attn_dim) / attn_dim ** 0.5)
        else:
            self.query = nn.Linear(dim, attn_dim)

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, T, D] -> attention result [B, T, D] and weights [B, T, T] (row t over i <= t)."""
        B, T, _ = h.shape
        k = torch.tanh(self.keys(h))                                   # [B, T, A]
        if self.kind == "fixed":
            scores = (k @ self.query).unsqueeze(1).expand(B, T, T)
        elif self.kind == "syntax":
            scores = self.query[:T] @ k.transpose(1, 2)                # [B, T, T]
        else:
            scores = self.query(h) @ k.transpose(1, 2)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=h.device), 1)
        blocked = future | pad.unsqueeze(1)
        # self always (a float eye compared: ONNX Runtime has no boolean EyeLike)
        blocked = blocked & ~(torch.eye(T, device=h.device) > 0)
        w = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=2)
        return w @ h, w


class EventModel(Network):
    """What the next-token models share: the embedding, then (after each model's own
    recurrent layers) the attention head if it has one and the output layer."""
    attention_kind: str | None = None   # of CausalAttention; None: no attention
    keep_state = False             # output from [h_t; a_t], not from a_t alone

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD)

    def _add_head(self, width: int) -> None:
        """The attention over states of `width` and the output layer, created after the
        recurrent layers (the order in which torch's RNG initialises them)."""
        cfg = self.cfg
        self.attn = (CausalAttention(self.attention_kind, width, cfg.attn_dim, 2 * cfg.window)
                     if self.attention_kind else None)
        self.out = nn.Linear(2 * width if self.keep_state else width, cfg.vocab_size)

    def _head(self, h: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.attn is None:
            return h, None
        a, w = self.attn(h, pad)
        if self.keep_state:
            return torch.cat([h, a], dim=2), w
        return a, w

    @staticmethod
    def _weights(w, B, p, K, rows=slice(None)) -> torch.Tensor:
        if w is None:
            return torch.zeros(B, p, 0)
        return w[:, rows, :K]


class LSTMLanguageModel(EventModel):
    """em: an LSTM over [context; target], each target syscall predicted from h_t."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__(cfg)
        self.lower = nn.LSTM(cfg.embed_dim, cfg.hidden, num_layers=cfg.layers,
                             batch_first=True)
        self._add_head(cfg.hidden)

    def forward(self, src: torch.Tensor, prev: torch.Tensor, tgt: torch.Tensor,
                Z_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, p, V] for the target, attention [B, p, 2p - 1] over the inputs read."""
        B, p = tgt.shape
        x = torch.cat([src, tgt], dim=1)                               # [B, 2p]
        inp = x[:, :-1]
        h, _ = self.lower(self.embed(x)[:, :-1])
        feats, w = self._head(h, inp == PAD)
        rows = slice(p - 1, None)
        return self.out(feats[:, rows]), self._weights(w, B, p, 2 * p - 1, rows=rows)


class FixedAttentionLM(LSTMLanguageModel):
    """fixed: attention over h_1..h_t with one learned query for every position."""
    attention_kind = "fixed"


class SyntaxAttentionLM(LSTMLanguageModel):
    """syntax: one learned query per position."""
    attention_kind = "syntax"


class Semantic1AttentionLM(LSTMLanguageModel):
    """semantic1: the query computed from h_t; output from the attention result a_t."""
    attention_kind = "semantic"


class Semantic2AttentionLM(LSTMLanguageModel):
    """semantic2: as semantic1, output from [h_t; a_t]."""
    attention_kind = "semantic"
    keep_state = True


class BidirectionalLM(EventModel):
    """bem: target syscall t from the forward state before t and the backward state after
    it, inside the window."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__(cfg)
        E, H = cfg.embed_dim, cfg.hidden
        self.fwd = nn.LSTM(E, H, num_layers=cfg.layers, batch_first=True)
        self.bwd = nn.LSTM(E, H, num_layers=cfg.layers, batch_first=True)
        self._add_head(2 * H)

    def forward(self, src: torch.Tensor, prev: torch.Tensor, tgt: torch.Tensor,
                Z_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, p, V] for the target; no attention ([B, p, 0])."""
        B, p = tgt.shape
        e = self.embed(torch.cat([src, tgt], dim=1))                  # [B, 2p, E]
        f, _ = self.fwd(e)
        b, _ = self.bwd(torch.flip(e, dims=[1]))
        b = torch.flip(b, dims=[1])
        zero = torch.zeros_like(b[:, :1])
        # token j: forward state after j-1, backward state from j+1 on
        feats = torch.cat([f[:, p - 1:2 * p - 1], torch.cat([b[:, p + 1:], zero], 1)], 2)
        return self.out(feats), torch.zeros(B, p, 0)


class TieredLM(EventModel):
    """tiered: an upper-tier LSTM over summaries (a lower-tier LSTM's last state) of the
    thread's previous and current source windows; its state conditions the lower-tier
    model of the target window."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__(cfg)
        E, H = cfg.embed_dim, cfg.hidden
        self.summary = nn.LSTM(E, H, batch_first=True)
        self.upper = nn.LSTM(H, H, batch_first=True)
        self.lower = nn.LSTM(E + H, H, num_layers=cfg.layers, batch_first=True)
        self._add_head(H)

    def forward(self, src: torch.Tensor, prev: torch.Tensor, tgt: torch.Tensor,
                Z_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, p, V] for the target, attention [B, p, p] over the lower tier's inputs."""
        B, p = tgt.shape
        summaries = [self.summary(self.embed(w))[0][:, -1] for w in (prev, src)]
        u, _ = self.upper(torch.stack(summaries, dim=1))
        x = torch.cat([src[:, -1:], tgt[:, :-1]], dim=1)              # the lower tier's inputs
        ctx = u[:, -1:].expand(-1, p, -1)
        h, _ = self.lower(torch.cat([self.embed(x), ctx], dim=2))
        feats, w = self._head(h, x == PAD)
        return self.out(feats), self._weights(w, B, p, p)


class TieredAttentionLM(TieredLM):
    """tiered-attention: tiered, with semantic2 attention in the lower tier."""
    attention_kind = "semantic"
    keep_state = True
