"""How much context helps on ADFA-LD: an accuracy study, not a speed benchmark.

    .venv/bin/python bench/adfa_context.py [--epochs 8] [--hidden 128]

Same split as `sysdream eval --dataset adfa-ld` (seed 0: train on Training_Data_Master,
test on the seeded half of Validation_Data_Master that eval tests on, and every attack
trace). A trace's score is its mean negative log-likelihood per syscall. Prints ROC-AUC for

- the n-gram language model of model/baselines.py over the whole trace at orders 2 to 10
  (order n reads n - 1 syscalls of context);
- a whole-trace LSTM language model in the manner of Kim et al. 2016's single models: it
  reads each trace from its first syscall, so every prediction has the whole thread
  before it (embedding 32, one LSTM layer, truncated back-propagation every 64 steps,
  early stopping on the loss of a tenth of the training traces held out);
- the n-gram models again when the calibration half of Validation_Data_Master is learnt
  too (not eval's protocol: it shows how far Training and Validation differ), and with the
  test normal traces that repeat a training or calibration trace byte for byte left out.

DReAM's own figure (ROC-AUC 0.842 at window 16) comes from `sysdream eval`; the README
puts them side by side.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn

from sysdream.daemon.commands.evaluate import adfa_split
from sysdream.daemon.training.inputs import datasets_root
from sysdream.model.baselines import NGram
from sysdream.model.metrics import roc_auc
from sysdream.model.vocab import Vocabulary

ORDERS = (2, 4, 6, 8, 10)


class TraceLM(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(vocab + 1, 32)        # + a start token
        self.lstm = nn.LSTM(32, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        h, state = self.lstm(self.emb(x), state)
        return self.out(h), state


def batches(seqs: list[np.ndarray], start: int, size: int, rng=None):
    """Padded (input, target) batches of whole traces; the input is shifted by a start
    token, padding targets are -100 (ignored)."""
    order = rng.permutation(len(seqs)) if rng is not None else np.arange(len(seqs))
    for lo in range(0, len(seqs), size):
        group = [seqs[i] for i in order[lo:lo + size]]
        n = max(len(s) for s in group) + 1
        x = np.zeros((len(group), n), np.int64)
        y = np.full((len(group), n), -100, np.int64)
        for j, s in enumerate(group):
            x[j, 0], x[j, 1:len(s) + 1], y[j, :len(s)] = start, s, s
        yield torch.from_numpy(x), torch.from_numpy(y)


def trace_nll(net: TraceLM, seqs: list[np.ndarray], start: int) -> np.ndarray:
    out = []
    net.eval()
    with torch.inference_mode():
        for x, y in batches(seqs, start, 64):
            logits, _ = net(x)
            nll = nn.functional.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100,
                                              reduction="none")
            mask = (y != -100).float()
            out.extend(((nll * mask).sum(1) / mask.sum(1)).tolist())
    return np.array(out)


def train_lm(train: list[np.ndarray], vocab: int, hidden: int, epochs: int, seed: int):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(train), bool)
    held[rng.permutation(len(train))[:len(train) // 10]] = True
    fit = [s for s, h in zip(train, held, strict=True) if not h]
    val = [s for s, h in zip(train, held, strict=True) if h]
    net = TraceLM(vocab, hidden)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    best, best_state, stale = float("inf"), None, 0
    for epoch in range(epochs):
        net.train()
        for x, y in batches(fit, vocab, 32, rng):
            state = None
            for lo in range(0, x.shape[1], 64):
                xx, yy = x[:, lo:lo + 64], y[:, lo:lo + 64]
                if not (yy != -100).any():
                    break
                logits, state = net(xx, state)
                state = tuple(s.detach() for s in state)
                loss = nn.functional.cross_entropy(logits.transpose(1, 2), yy,
                                                   ignore_index=-100)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
        v = float(trace_nll(net, val, vocab).mean())
        print(f"  LSTM epoch {epoch + 1}: held-out loss {v:.3f}", file=sys.stderr)
        if v < best:
            best, best_state, stale = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= 2:
                break
    net.load_state_dict(best_state)
    return net


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    split = adfa_split(datasets_root() / "ADFA-LD", args.seed)
    vocab = Vocabulary.build(split.train + split.calibrate)
    enc = {k: [vocab.encode(s) for s in getattr(split, k)]
           for k in ("train", "calibrate", "test_normal", "test_attack")}
    known = {s.tobytes() for s in enc["train"] + enc["calibrate"]}
    fresh = np.array([s.tobytes() not in known for s in enc["test_normal"]])
    print(f"ADFA-LD: train {len(enc['train'])}, calibrate {len(enc['calibrate'])}, test "
          f"{len(enc['test_normal'])} normal ({int((~fresh).sum())} repeat a training or "
          f"calibration trace) and {len(enc['test_attack'])} attack traces")

    def roc(model_nll) -> tuple[float, float]:
        n = np.array([model_nll(s) for s in enc["test_normal"]])
        a = np.array([model_nll(s) for s in enc["test_attack"]])
        return roc_auc(n, a), roc_auc(n[fresh], a)

    print(f"{'model (trace score: mean NLL)':44}{'ROC-AUC':>9}{'repeats out':>13}")
    for learn in ("train", "train+calibrate"):
        seqs = enc["train"] + (enc["calibrate"] if learn != "train" else [])
        for n in ORDERS:
            m = NGram(len(vocab), n=n).fit(seqs)
            full, new = roc(lambda s, m=m: float(m.token_nll(s).mean()))
            print(f"{f'{n}-gram LM, learns {learn}':44}{full:9.3f}{new:13.3f}", flush=True)
    t0 = time.monotonic()
    net = train_lm(enc["train"], len(vocab), args.hidden, args.epochs, args.seed)
    n_nll = trace_nll(net, enc["test_normal"], len(vocab))
    a_nll = trace_nll(net, enc["test_attack"], len(vocab))
    name = f"whole-trace LSTM LM (h {args.hidden}), learns train"
    print(f"{name:44}{roc_auc(n_nll, a_nll):9.3f}{roc_auc(n_nll[fresh], a_nll):13.3f}"
          f"   ({time.monotonic() - t0:.0f} s to train and score)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
