"""The DReAM network (Ezeme, Mahmoud, Azim), section III, equation numbers beside the code.

Encoder: the source window, reversed, through a stacked bidirectional LSTM -> h_i.
Attention with a learned query W_q:
    m_i = tanh(W_i h_i + b_i)                (III.3)
    a_i = W_q m_i + b_q                      (III.4)
    s   = softmax(a)                         (III.5)
    Z   = sum_i s_i h_i                      (III.6)
Decoder: h_t = LSTM(h_{t-1}, [V_{t-1}; Z; Z_{t-1}])   (III.7)
where V_{t-1} is the previous output token (teacher-forced with the true one) and Z_{t-1}
the attention vector of the thread's previous window, so context carries across windows:
in training it is computed from `prev`; in scoring, where a window's `prev` is the previous
row's source (stride = window), that row's Z is reused (`score_batch`).
h_0 comes from Z and the encoder's final states, as in any encoder-decoder: Z alone, a
weighted mean, cannot say in which order the last syscalls came.
Output: a fully connected layer over the vocabulary.

With task "reconstruct" the decoder rebuilds the source window; with "predict-next" the
source is the context and the decoder emits the window that follows it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import NetworkConfig
from .network import Network, Scored
from .vocab import PAD
from .windows import Windows, carried


class ContextAttention(nn.Module):
    """Context-aware attention with one learned query vector (III.3-III.6)."""

    def __init__(self, dim: int, attn_dim: int):
        super().__init__()
        self.W_i = nn.Linear(dim, attn_dim)        # W_i, b_i
        self.W_q = nn.Linear(attn_dim, 1)          # W_q, b_q

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.tanh(self.W_i(h))                            # (III.3)
        a = self.W_q(m).squeeze(-1)                            # (III.4)
        # Padding is not attended to, unless a window is all padding.
        a = a.masked_fill(pad & ~pad.all(1, keepdim=True), float("-inf"))
        s = torch.softmax(a, dim=1)                            # (III.5)
        Z = torch.bmm(s.unsqueeze(1), h).squeeze(1)            # (III.6)
        return Z, s


class DReAM(Network):
    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.cfg = cfg
        d_enc = 2 * cfg.hidden
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD)
        self.encoder = nn.LSTM(cfg.embed_dim, cfg.hidden, num_layers=cfg.layers,
                               batch_first=True, bidirectional=True)
        self.attention = ContextAttention(d_enc, cfg.attn_dim)
        # The decoder is as wide as one encoder direction: it carries one state, not two,
        # and its width is most of the scoring cost (measured in bench/model.py).
        # conditioned on the program (NetworkConfig.condition "decoder"): the embedding of
        # the token heading the source feeds the decoder at every step and its first state
        c = cfg.embed_dim if cfg.condition == "decoder" else 0
        self.init_state = nn.Linear(2 * d_enc + c, cfg.hidden)
        self.decoder = nn.LSTM(cfg.embed_dim + 2 * d_enc + c, cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Z, the attention weights s and the encoder's final states [B, 2H] for a batch of
        source windows; s is in the window's own order (position 0 = oldest syscall)."""
        rev = torch.flip(src, dims=[1])                        # the source reversed
        h, (h_n, _) = self.encoder(self.embed(rev))
        Z, s = self.attention(h, rev == PAD)
        final = torch.cat([h_n[-2], h_n[-1]], dim=1)           # last layer, both directions
        return Z, torch.flip(s, dims=[1]), final

    def decode(self, Z: torch.Tensor, Z_prev: torch.Tensor, final: torch.Tensor,
               dec_in: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        p = dec_in.shape[1]
        cond = [self.embed(src[:, 0])] if self.cfg.condition == "decoder" else []
        ctx = torch.cat([Z, Z_prev, *cond], dim=1).unsqueeze(1).expand(-1, p, -1)
        x = torch.cat([self.embed(dec_in), ctx], dim=2)       # [V_{t-1}; Z; Z_{t-1}]
        h0 = torch.tanh(self.init_state(torch.cat([Z, final, *cond], dim=1))).unsqueeze(0)
        d, _ = self.decoder(x, (h0, torch.zeros_like(h0)))    # (III.7)
        return self.out(d)

    def start_tokens(self, src: torch.Tensor) -> torch.Tensor:
        if self.cfg.task == "predict-next":
            return src[:, -1:]            # the window follows the context's last syscall
        return torch.full_like(src[:, :1], PAD)

    def forward(self, src: torch.Tensor, prev: torch.Tensor, tgt: torch.Tensor,
                Z_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, p, V] for the target and attention [B, 1, p] over the source."""
        B = src.shape[0]
        if Z_prev is None:
            Z_all, s_all, f_all = self.encode(torch.cat([src, prev]))
            Z, s, final, Z_prev = Z_all[:B], s_all[:B], f_all[:B], Z_all[B:]
        else:
            Z, s, final = self.encode(src)
        dec_in = torch.cat([self.start_tokens(src), tgt[:, :-1]], dim=1)
        return self.decode(Z, Z_prev, final, dec_in, src), s.unsqueeze(1)

    def score_batch(self, w: Windows) -> Scored:
        """As forward, one encoder pass per window: Z_{t-1} is the previous row's Z where
        that row's source is this row's `prev`, and is encoded from `prev` elsewhere."""
        src, tgt = self.tensor(w.src), self.tensor(w.tgt)
        Z, s, final = self.encode(src)
        Z_prev = torch.empty_like(Z)
        c = self.tensor(carried(w))
        Z_prev[1:][c[1:]] = Z[:-1][c[1:]]
        if (~c).any():
            Z_prev[~c] = self.encode(self.tensor(w.prev)[~c])[0]
        dec_in = torch.cat([self.start_tokens(src), tgt[:, :-1]], 1)
        return Scored(self.decode(Z, Z_prev, final, dec_in, src), s.unsqueeze(1), Z)

