"""Scoring throughput on CPU: uncached windows per second at batch 1, 64 and 1024, for the
default DReAM size and a few others, by torch and by ONNX Runtime on the network exported
as training exports it (model/export.py), against the DeepLog-style baseline in the same run.

    .venv/bin/python bench/model.py [--threads 2]
    .venv/bin/python bench/model.py --equal [--epochs 3]

--equal trains the default network on ADFA-LD's training traces (a few epochs: equality
does not depend on how well it learnt), saves the bundle and scores every trace of the
test set (Validation_Data_Master and Attack_Data_Master) with both runtimes, printing the
largest relative difference of the window scores.

Windows are cut from ADFA-LD's training traces when ../shared/datasets is there, else from
random token ids (the network's cost does not depend on the tokens). Each size is timed on
the same windows with fresh random weights (speed does not depend on training). A DReAM
window scores p syscalls; a DeepLog "window" is its 10-syscall history predicting one
syscall, so syscalls/s is the column to compare across the two.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from sysdream.model import export
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


def dream_rates(size: dict, batches, ids: np.ndarray, threads: int) -> dict:
    """{batch: (torch windows/s, onnxruntime windows/s)}, the same windows for both."""
    cfg = NetworkConfig(vocab_size=V, stride=size["window"], **size).validate()
    torch.manual_seed(0)
    net = cfg.build().eval()
    lean = export.OnnxNetwork(cfg, export.export(net), threads)
    w = cut_many([ids], cfg.window, cfg.window, cfg.task).take(slice(0, 4096))
    out = {}
    for batch in batches:
        sub = w.take(slice(0, min(len(w), max(batch, 1024))))
        if batch == 1:  # one window per call, as a daemon with an empty queue would
            sub = w.take(slice(0, 64))
        out[batch] = tuple(rate(lambda m=m, sub=sub, batch=batch: [
            score(m, sub.take(slice(i, i + batch)), batch, detail=False)
            for i in range(0, len(sub), batch)], len(sub)) for m in (net, lean))
    return out


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


def equal(epochs: int, threads: int, max_windows: int) -> None:
    """The largest relative difference between torch's and ONNX Runtime's window scores on
    every ADFA-LD test trace, by a network trained and exported as `sysdream train` does."""
    from sysdream.daemon.inputs import datasets_root
    from sysdream.model.config import TrainSettings
    from sysdream.model.detector import Detector
    from sysdream.probes.datasets import read_adfa_ld

    root = datasets_root() / "ADFA-LD"
    train = [s.tokens for s in read_adfa_ld(root, "train")]
    test = [s.tokens for s in read_adfa_ld(root, "validation") + read_adfa_ld(root, "attack")]
    t0 = time.perf_counter()
    det = Detector.train(train, None, NetworkConfig(vocab_size=1),
                         TrainSettings(epochs=epochs, threads=threads,
                                       max_windows=max_windows))
    print(f"trained in {time.perf_counter() - t0:.0f} s ({epochs} epochs of at most "
          f"{max_windows} windows)")
    with tempfile.TemporaryDirectory() as tmp:
        det.save(os.path.join(tmp, "model"))
        lean = Detector.load(os.path.join(tmp, "model"), threads=threads)
        full = Detector.load(os.path.join(tmp, "model"), runtime="torch")
    assert lean.runtime == "onnxruntime", lean.runtime
    t0 = time.perf_counter()
    a = lean.window_scores(test, 1024)
    ta = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = full.window_scores(test, 1024)
    tb = time.perf_counter() - t0
    worst = export.relative_difference(a, b)
    print(f"ADFA-LD test set: {len(test)} traces, {len(a)} windows; largest relative "
          f"difference {worst:.2e} (tolerance {export.TOLERANCE:g}); largest absolute "
          f"{float(np.max(np.abs(a - b))):.2e}; scored in {ta:.1f} s (onnxruntime) and "
          f"{tb:.1f} s (torch)")


MEMORY = """
import resource, sys, time
import numpy as np
t0 = time.perf_counter()
from sysdream.model.detector import Detector
d = Detector.load(sys.argv[1], runtime=sys.argv[2], threads=2)
d.score_sequence(np.array(["open", "read", "close"] * 400, dtype=object))
took = time.perf_counter() - t0
kb = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status")
      if l.startswith(("VmRSS", "VmHWM"))}
print(f"{sys.argv[2]:<6} scores with {d.runtime:<12} load + first score {took:6.2f} s, "
      f"VmRSS {kb['VmRSS'] / 1024:.1f} MB, VmHWM {kb['VmHWM'] / 1024:.1f} MB, torch "
      f"{'imported' if 'torch' in sys.modules else 'not imported'}")
"""


def memory(bundle: str) -> None:
    """Each runtime's detecting load and first score, in a fresh interpreter each."""
    import subprocess
    import sys

    for runtime in ("auto", "torch"):
        subprocess.run([sys.executable, "-c", MEMORY, bundle, runtime], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--equal", action="store_true",
                    help="torch's and ONNX Runtime's scores on the ADFA-LD test set")
    ap.add_argument("--epochs", type=int, default=3, help="of the --equal network")
    ap.add_argument("--max-windows", type=int, default=60_000,
                    help="per epoch, of the --equal network")
    ap.add_argument("--memory", metavar="BUNDLE",
                    help="memory and time of a detecting load and score, by each runtime")
    ap.add_argument("--default-only", action="store_true",
                    help="the default size alone (no other sizes, no DeepLog)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{args.threads} threads (onnxruntime: intra-op {args.threads}, inter-op 1), fp32; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs")
    if args.memory:
        memory(args.memory)
        return
    if args.equal:
        equal(args.epochs, args.threads, args.max_windows)
        return
    ids = tokens(200_000)
    print(f"{'model':<28}{'batch':>6}{'torch w/s':>12}{'ort w/s':>12}{'ort/torch':>10}"
          f"{'ort syscalls/s':>16}")
    results = {}
    for size in [DEFAULT] if args.default_only else SIZES:
        tag = f"dream h{size['hidden']} p{size['window']}" + \
            (" (default)" if size == DEFAULT else "")
        for b, (rt, ro) in dream_rates(size, BATCHES, ids, args.threads).items():
            results[(tag, b)] = (rt, ro)
            print(f"{tag:<28}{b:>6}{rt:12.0f}{ro:12.0f}{ro / rt:10.2f}"
                  f"{ro * size['window']:16.0f}", flush=True)
    for b in () if args.default_only else BATCHES:
        r = deeplog_rate(b, ids)
        results[("deeplog", b)] = r
        print(f"{'DeepLog h64 x2, history 10':<28}{b:>6}{r:12.0f}{'':>12}{'':>10}{r:16.0f}",
              flush=True)
    d = [k for k in results if k[0].endswith("(default)") and k[1] == 1024][0]
    rt, ro = results[d]
    print(f"\ndefault at batch 1024: torch {rt:.0f} windows/s, onnxruntime {ro:.0f} "
          f"({ro / rt:.2f}x); load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
