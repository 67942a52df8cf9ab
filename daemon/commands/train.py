"""`sysdream train`: a bundle from traces or datasets (the model room driven from the
command line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from sysdream.model import archs
from sysdream.model.config import NetworkConfig, TrainSettings
from sysdream.probes import datasets

from ..training.guard import share_cap
from ..training.hostmodel import _cond_of, _host_model
from ..training.inputs import label_lines, read_input
from ..training.profile import thread_labels
from ..training.progress import _progress, _report

# The default model, chosen by `sysdream eval --dataset adfa-ld` (see README).
DEFAULTS = {"arch": archs.DEFAULT, "task": "predict-next", "window": 16, "stride": 16,
            "embed_dim": 32, "hidden": 32}


def network_config(args) -> NetworkConfig:
    return NetworkConfig(vocab_size=1, arch=args.arch, task=args.task, window=args.window,
                         stride=args.stride or args.window, embed_dim=args.embed,
                         hidden=args.hidden, layers=args.layers,
                         freeze_embedding=args.freeze_embedding,
                         condition=getattr(args, "condition", "") or "").validate()


def train_settings(args) -> TrainSettings:
    return TrainSettings(epochs=args.epochs, patience=args.patience, seed=args.seed,
                         threads=args.threads, train_stride=args.train_stride)


def add_model_arguments(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=DEFAULTS["arch"],
                   help="the network (eval: a comma-separated list of them). "
                        + archs.help_text())
    g.add_argument("--task", default=DEFAULTS["task"], help="predict-next (default) or "
                   "reconstruct (" + ", ".join(a.name for a in archs.ARCHS.values()
                                               if not a.next_token) + " only)")
    g.add_argument("--window", type=int, default=DEFAULTS["window"], help="syscalls per window")
    g.add_argument("--stride", type=int, default=None, help="syscalls between windows "
                   "when scoring (default: the window)")
    g.add_argument("--embed", type=int, default=DEFAULTS["embed_dim"])
    g.add_argument("--hidden", type=int, default=DEFAULTS["hidden"])
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--freeze-embedding", action="store_true",
                   help="keep the word2vec vectors fixed instead of fine-tuning them")
    g.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    g.add_argument("--patience", type=int, default=TrainSettings.patience)
    g.add_argument("--train-stride", type=int, default=TrainSettings.train_stride)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    g.add_argument("--confidence", type=float, default=0.999,
                   help="confidence of the Gaussian interval whose upper end is the bound")


def _shared(parts: list[list], share: float | None) -> list:
    """The sequences of every input, none giving more than `share` of all the syscalls
    when there are several (a fleet role's hosts: one cannot dominate, or poison, the
    model): an input over its share keeps its sequences in order up to it."""
    if not share or len(parts) < 2:
        return [s for part in parts for s in part]
    sizes = [sum(len(s.tokens) for s in part) for part in parts]
    cap, out = share_cap(sizes, share), []
    for part, n in zip(parts, sizes, strict=True):
        if n > cap:
            print(f"sysdream train: an input of {n} syscalls gives {cap} (--max-share "
                  f"{share:g})", file=sys.stderr)
        left = cap
        for s in part:
            if left <= 0:
                break
            if len(s.tokens) > left:
                s = dataclasses.replace(s, tokens=s.tokens[:left])
            out.append(s)
            left -= len(s.tokens)
    return out


def run_train(args) -> int:
    from sysdream.model.calibration import check_confidence
    from sysdream.model.detector import Detector

    from ..service.runtime import adapt_torch
    from ..training.inputs import trace_files
    adapt_torch(lambda m: print(f"sysdream train: {m}", file=sys.stderr))

    cfg = network_config(args)
    settings = train_settings(args)
    args.progress_out = None
    if args.progress_fd is not None:
        try:
            args.progress_out = os.fdopen(args.progress_fd, "w", buffering=1)
        except OSError as exc:
            raise ValueError(f"--progress-fd {args.progress_fd}: {exc.strerror}; give an "
                             "open file descriptor") from None
    if args.alert_confidence is not None:
        check_confidence(args.alert_confidence)
    sign = None
    if args.sign:
        from ..signing import signer
        sign = signer(args.sign)        # a bad key stops here, before hours of training
    seqs = _shared([read_input(spec) for spec in args.input], args.max_share)
    recent = _guarded(args, seqs) if args.recent else []
    if args.allowed:
        from ..training.guard import allowed_sequences

        allowed = allowed_sequences(Path(args.allowed))
        print(f"sysdream train: {len(allowed)} allowed windows (--allowed) trained on as "
              "normal", file=sys.stderr)
        seqs += allowed
    if args.calibrate:
        calib = [s for spec in args.calibrate for s in read_input(spec)]
        held = f"calibrating on {len(calib)} other sequences"
    else:
        calib = None
        held = "holding out blocks of windows of each for calibration and validation"
    names = [s.tokens for s in seqs]
    print(f"sysdream train: {len(seqs)} sequences, {sum(map(len, names))} syscalls; {held}",
          file=sys.stderr)
    calib_names = None if calib is None else [s.tokens for s in calib]
    # a host's own recordings (trace files with process context): the lineage profile,
    # and the alert bound fitted on their held-out last quarter with a model that never
    # saw it (the one kept, unless --retrain asks for one trained on everything)
    host = [(p, t) for p, t in trace_files(args.input, paths=True) if len(t.context)]
    host += recent
    # a conditioned model: each thread's program, from the process context recorded
    labels = {str(p): thread_labels(t) for p, t in host} if cfg.condition else {}
    conds = [_cond_of(s.source, labels) for s in seqs] if cfg.condition else None
    det = lineage = replay = None
    if host:
        det, replay, lineage = _host_model(args, cfg, settings, seqs, host, calib_names,
                                           conds, labels)
    if det is None or args.retrain:
        alerting = det.alerting if det is not None else None
        if det is not None:
            print("sysdream train: --retrain: training once more on everything; the alert "
                  "bound fitted above carries over", file=sys.stderr)
        det = Detector.train(names, calib_names, cfg, settings, args.confidence,
                             _progress(args, "model"), conds=conds)
        det.alerting = alerting
    if args.labels:
        from sysdream.model import transfer

        attacks = [s.tokens for spec in label_lines(args.labels)
                   for s in read_input(spec, "attack")]
        # normal examples: the calibration traces, or without them the training traces
        normal = calib if calib is not None else seqs
        det.transfer = transfer.fit(det, [s.tokens for s in normal], attacks, args.seed)
    if host:
        det.lineage, det.training["heldout_alerts"] = lineage, replay
    model_id = det.save(args.output, sign)
    _report(args.progress_out, {"stage": "written", "model_id": model_id})
    b = det.bound
    if getattr(args, "format", "text") == "json":
        print(json.dumps({
            "model_id": model_id, "output": str(args.output), "signed": bool(sign),
            "sequences": len(seqs), "syscalls": sum(map(len, names)),
            "vocabulary": len(det.vocab), "arch": cfg.arch, "task": cfg.task,
            "best_epoch": det.training["best_epoch"], "seconds": det.training["seconds"],
            "bound": b.bound, "confidence": b.confidence, "transform": b.transform,
            "ks_statistic": b.ks_statistic, "host_recording": bool(host)}, default=str))
        return 0
    print(f"sysdream train: model {model_id} written to {args.output}: vocabulary "
          f"{len(det.vocab)}, best epoch {det.training['best_epoch']}, bound {b.bound:.4f} "
          f"({b.confidence:.1%}, {b.transform} fit, KS {b.ks_statistic:.3f}), "
          f"{det.training['seconds']:.0f} s", file=sys.stderr)
    return 0


def _guarded(args, seqs: list) -> list:
    """--recent less what --guard removes: (path, Trace) of those with process context
    (host recordings); the threads of all are added to `seqs` (as a host's own input's
    are: the held-out model takes them from the traces, a whole --retrain from `seqs`)."""
    from sysdream.model.detector import Detector
    from sysdream.probes.streams import by_thread
    from sysdream.probes.tracefile import read_trace

    from ..training.guard import describe, guard

    if not args.guard:
        raise ValueError("--recent needs --guard MODEL: the model that detected while they "
                         "were recorded")
    for flag, v in (("--guard-near", args.guard_near), ("--program-share", args.program_share)):
        if not 0 < v <= 1:
            raise ValueError(f"{flag} {v:g}: give a fraction above 0, at most 1")
    old = Detector.load(args.guard)
    traces = [read_trace(p) for p in args.recent]
    kept, report = guard(old, traces, args.guard_near, args.program_share)
    print(f"sysdream train: {describe(report)}", file=sys.stderr)
    out = []
    for path, t in zip(args.recent, kept, strict=True):
        if len(t.context):
            out.append((Path(path), t))
        seqs += [datasets.Sequence(f"{path}:{s.tid}", t.syscall_names(s.ids), "normal")
                 for s in by_thread(t.records).values()]
    return out
