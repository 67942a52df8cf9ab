"""Training a network on normal windows: seeded, early-stopped on validation loss."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import NetworkConfig, TrainSettings
from .scoring import window_nll
from .windows import Windows


@dataclass
class TrainResult:
    net: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def mean_loss(net, w: Windows, batch: int = 1024) -> float:
    net.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for lo in range(0, len(w), batch):
            s = slice(lo, lo + batch)
            logits, _ = net(*(torch.from_numpy(a[s]) for a in (w.src, w.prev, w.tgt)))
            mask = torch.from_numpy(w.mask[s])
            total += float(window_nll(logits, torch.from_numpy(w.tgt[s]), mask).sum())
            count += int(mask.sum())
    return total / max(count, 1)


def train(cfg: NetworkConfig, train_w: Windows, val_w: Windows, settings: TrainSettings,
          embedding: np.ndarray | None = None,
          progress: Callable[[str], None] | None = None) -> TrainResult:
    if len(train_w) == 0:
        raise ValueError("no training windows: the training data is empty")
    torch.set_num_threads(settings.threads)
    seed_everything(settings.seed)
    net = cfg.build()
    if embedding is not None:
        net.embed.weight.data.copy_(torch.from_numpy(embedding))
        net.embed.weight.requires_grad_(not cfg.freeze_embedding)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    best, best_state, best_epoch, stale = math.inf, None, 0, 0
    history = []
    t0 = time.monotonic()
    for epoch in range(1, settings.epochs + 1):
        net.train()
        order = rng.permutation(len(train_w))[:settings.max_windows]
        total, count = 0.0, 0
        steps = math.ceil(len(order) / settings.batch)
        for i, lo in enumerate(range(0, len(order), settings.batch)):
            idx = order[lo:lo + settings.batch]
            tgt = torch.from_numpy(train_w.tgt[idx])
            mask = torch.from_numpy(train_w.mask[idx])
            logits, _ = net(torch.from_numpy(train_w.src[idx]),
                            torch.from_numpy(train_w.prev[idx]), tgt)
            nll = window_nll(logits, tgt, mask)
            loss = nll.sum() / mask.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += float(nll.detach().sum())
            count += int(mask.sum())
            if progress and (i % 20 == 0 or i == steps - 1):
                step = getattr(progress, "step", None)
                if step is not None:        # a bar with its ETA (ProgressLine)
                    step(epoch, settings.epochs, i + 1, steps, total / max(count, 1))
                else:
                    progress(f"epoch {epoch}/{settings.epochs} {100 * (i + 1) // steps:3d}% "
                             f"loss {total / max(count, 1):.4f}")
        val = mean_loss(net, val_w) if len(val_w) else total / max(count, 1)
        history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val,
                        "seconds": round(time.monotonic() - t0, 2)})
        if progress:
            done = getattr(progress, "epoch_done", None)
            if done is not None:            # a supervisor's structured report
                done(epoch, settings.epochs, total / max(count, 1), val)
            progress(f"epoch {epoch}: train {total / max(count, 1):.4f} validation {val:.4f}")
        if val < best - 1e-4:
            best, best_state, best_epoch, stale = val, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return TrainResult(net, history, best_epoch, time.monotonic() - t0)


class ProgressLine:
    """Training progress on stderr: on a terminal, a tqdm bar per epoch with its rate and
    time left; otherwise one line per epoch (what the daemon's trainer log and CI keep)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.bar = None

    def step(self, epoch: int, epochs: int, done: int, steps: int, loss: float) -> None:
        if not self.tty:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch",
                            file=self.stream, leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def __call__(self, text: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tty or ":" in text.split()[1]:
            self.stream.write(text + "\n")
        self.stream.flush()
