"""Scoring throughput on CPU: uncached windows per second at batch 1, 64 and 1024, for the
default DReAM size and a few others, against the DeepLog-style baseline in the same run.

    .venv/bin/python bench/model.py [--threads 2]

Windows are cut from ADFA-LD's training traces when ../shared/datasets is there, else from
random token ids (the network's cost does not depend on the tokens). Each size is timed on
the same windows with fresh random weights (speed does not depend on training). A DReAM
window scores p syscalls; a DeepLog "window" is its 10-syscall history predicting one
syscall, so syscalls/s is the column to compare across the two.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sysdream.model.baselines import DeepLog
from sysdream.model.config import NetworkConfig
from sysdream.model.scoring import score
from sysdream.model.windows import cut_many

DEFAULT = {"hidden": 32, "window": 16}
SIZES = [DEFAULT, {"hidden": 32, "window": 32}, {"hidden": 16, "window": 32},
         {"hidden": 64, "window": 32}]
BATCHES = (1, 64, 1024)
V = 180


def tokens(n: int) -> np.ndarray:
    try:
        from sysdream.daemon.training.inputs import datasets_root
        from sysdream.model.vocab import Vocabulary
        from sysdream.probes.datasets import read_adfa_ld

        seqs = [s.tokens for s in read_adfa_ld(datasets_root() / "ADFA-LD", "train")]
        vocab = Vocabulary.build(seqs)
        ids = np.concatenate([vocab.encode(s) for s in seqs])
        return np.resize(ids, n) % V
    except Exception:  # no datasets here: the cost is the same for any ids
        return np.random.default_rng(0).integers(2, V, n)


def rate(fn, items: int, min_seconds: float = 1.0) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += items
    return done / (time.perf_counter() - t0)


def dream_rate(size: dict, batch: int, ids: np.ndarray) -> float:
    cfg = NetworkConfig(vocab_size=V, stride=size["window"], **size).validate()
    torch.manual_seed(0)
    net = cfg.build().eval()
    w = cut_many([ids], cfg.window, cfg.window, cfg.task).take(slice(0, 4096))
    n = min(len(w), max(batch, 1024))
    sub = w.take(slice(0, n))
    if batch == 1:  # one window per call, as a daemon with an empty queue would
        sub = w.take(slice(0, 64))
        return rate(lambda: [score(net, sub.take(slice(i, i + 1)), 1, detail=False)
                             for i in range(len(sub))], len(sub))
    return rate(lambda: score(net, sub, batch, detail=False), len(sub))


def deeplog_rate(batch: int, ids: np.ndarray) -> float:
    d = DeepLog(V)
    seq = ids[:max(batch, 64) if batch > 1 else 64]

    def run():
        if batch == 1:
            for i in range(len(seq)):
                d.token_miss(seq[i:i + 1], batch=1)
        else:
            d.token_miss(seq, batch=batch)
    return rate(run, len(seq))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = tokens(200_000)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, inference mode")
    print(f"{'model':<28}{'batch':>6}{'windows/s':>12}{'syscalls/s':>12}")
    results = {}
    for size in SIZES:
        tag = f"dream h{size['hidden']} p{size['window']}" + \
            (" (default)" if size == DEFAULT else "")
        for b in BATCHES:
            r = dream_rate(size, b, ids)
            results[(tag, b)] = r
            print(f"{tag:<28}{b:>6}{r:12.0f}{r * size['window']:12.0f}", flush=True)
    for b in BATCHES:
        r = deeplog_rate(b, ids)
        results[("deeplog", b)] = r
        print(f"{'DeepLog h64 x2, history 10':<28}{b:>6}{r:12.0f}{r:12.0f}", flush=True)
    d = [k for k in results if k[0].endswith("(default)") and k[1] == 1024][0]
    p = DEFAULT["window"]
    print(f"\ndefault at batch 1024: {results[d]:.0f} windows/s; syscalls/s "
          f"{results[d] * p / results[('deeplog', 1024)]:.2f}x DeepLog's")


if __name__ == "__main__":
    main()
