"""`sysdream train` and `sysdream eval`: the model room driven from the command line."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from sysdream.model import archs
from sysdream.model.config import NetworkConfig, TrainSettings
from sysdream.model.windows import condition_name
from sysdream.probes import datasets

from .inputs import datasets_root, read_input
from .lineage import thread_labels

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


def _split(seqs: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split by sequence (file or pid): `fraction` of them in the second part."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(seqs))
    cut = len(seqs) - max(1, int(round(len(seqs) * fraction)))
    return [seqs[i] for i in sorted(order[:cut])], [seqs[i] for i in sorted(order[cut:])]


def share_cap(sizes: list[int], share: float) -> int:
    """The most any one part may give so that none is over `share` of what all give
    after the cap: c with sum(min(n, c)) * share = c (found by bisection). Equal shares are
    always allowed."""
    share = max(share, 1 / len(sizes))
    lo, hi = 0.0, float(max(sizes))
    for _ in range(60):
        c = (lo + hi) / 2
        if sum(min(n, c) for n in sizes) * share >= c:
            lo = c
        else:
            hi = c
    return max(int(lo), 1)


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


def _progress(args, stage: str):
    """Training progress for stderr (ProgressLine), and with --progress-fd also as JSON
    lines for the process supervising this one: {"stage", "epoch", "epochs",
    "train_loss", "validation_loss"} at each epoch's end."""
    from sysdream.model.training import ProgressLine

    if args.progress_fd is None:
        return ProgressLine()
    out = args.progress_out

    class Report(ProgressLine):
        def epoch_done(self, epoch: int, epochs: int, train: float, val: float) -> None:
            _report(out, {"stage": stage, "epoch": epoch, "epochs": epochs,
                          "train_loss": round(train, 6), "validation_loss": round(val, 6)})
    return Report()


def _report(out, event: dict) -> None:
    """One JSON line to the supervisor; one that went away is not an error of training."""
    if out is None:
        return
    try:
        out.write(json.dumps(event) + "\n")
        out.flush()
    except OSError:
        pass


def run_train(args) -> int:
    from sysdream.model.calibration import check_confidence
    from sysdream.model.detector import Detector

    from .inputs import trace_files
    from .runtime import adapt_torch
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
        from .signing import signer
        sign = signer(args.sign)        # a bad key stops here, before hours of training
    seqs = _shared([read_input(spec) for spec in args.input], args.max_share)
    recent = _guarded(args, seqs) if args.recent else []
    if args.allowed:
        from .retraining import allowed_sequences

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

        attacks = [s.tokens for spec in _lines(args.labels) for s in read_input(spec, "attack")]
        # normal examples: the calibration traces, or without them the training traces
        normal = calib if calib is not None else seqs
        det.transfer = transfer.fit(det, [s.tokens for s in normal], attacks, args.seed)
    if host:
        det.lineage, det.training["heldout_alerts"] = lineage, replay
    model_id = det.save(args.output, sign)
    _report(args.progress_out, {"stage": "written", "model_id": model_id})
    b = det.bound
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

    from .retraining import describe, guard

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


def _cond_of(source: str, labels: dict) -> str:
    """The program token of a sequence from `source` ("path:tid"): its thread's program
    in `labels` (path -> tid -> label), the unknown program's for a dataset's."""
    path, _, tid = source.rpartition(":")
    return condition_name(labels.get(path, {}).get(int(tid), "") if tid.isdigit() else "")


def _outside(seqs, host, conds, labels, a: int, b: int | None) -> tuple[list, list]:
    """The sequences (and program tokens) of a network that never saw the host's activity
    from kernel time a to b (None: to the end): every dataset input, and each host thread's
    records before a and from b on, as two sequences."""
    from sysdream.probes.streams import by_thread
    paths = {str(p) for p, _ in host}
    mine = [s.source.rpartition(":")[0] not in paths for s in seqs]
    names = [s.tokens for s, m in zip(seqs, mine, strict=True) if m]
    cs = [c for c, m in zip(conds, mine, strict=True) if m] if conds else []
    for p, t in host:
        r = t.records
        parts = [r[r["last_ns"] < a]] + ([r[r["last_ns"] >= b]] if b is not None else [])
        for part in parts:
            for s in by_thread(part).values():
                names.append(t.syscall_names(s.ids))
                cs.append(condition_name((labels or {}).get(str(p), {}).get(s.tid, "")))
    keep = [len(n) > 0 for n in names]
    return ([n for n, k in zip(names, keep, strict=True) if k],
            [c for c, k in zip(cs, keep, strict=True) if k])


def _host_model(args, cfg, settings, seqs, host, calib_names, conds=None, labels=None):
    """For a host's own recordings: (a model trained on the first three quarters of them by
    time, carrying the alert bound fitted on what it never saw, or None where they span no
    time; what the whole rule raised there; the lineage profile's JSON).

    The lineage profile of the first three quarters and the model replay the whole alert
    rule on the last quarter (daemon/replay.py): the excursion peaks found there give the
    alert bound (daemon/evidence.py). With --folds 2, the quarter before it is held out too,
    from a second network and profile that learnt the rest: twice the held-out time (and
    twice the training) for the fit. Neither a network nor a profile saw the activity its
    peaks come from."""
    from sysdream.model.detector import Detector

    from .evidence import AlertBound, fit_alert_bound
    from .lineage import Profile, active_ns, held_out_folds
    from .replay import alerts_after

    traces = [t for _, t in host]
    alpha = (1 - args.confidence) / 2
    prof, early = Profile.learn_with_heldout(traces, alpha, args.sequences)
    edges = sum(len(v) for v in prof.edges.values())
    grams = (f", {sum(len(h) for h in prof.grams.values())} distinct 6-syscall sequences "
             f"(a run of new ones every {1 / prof.gram_default:.0f} held out)"
             if prof.gram_default else "")
    print(f"sysdream train: lineage: {len(prof.programs)} programs, {edges} exec edges, "
          f"{prof.execs} execs{grams}", file=sys.stderr)
    spans = held_out_folds(traces, getattr(args, "folds", 1) or 1)
    if not spans or early is None:
        return None, None, prof.to_json()
    folds = []       # (network, profile, from, to, until: None to the end)
    for i, (a, b) in enumerate(spans):
        last = i == 0
        names, cs = _outside(seqs, host, conds, labels, a, None if last else b)
        secs = active_ns(traces, a, None if last else b) / 1e9
        n = sum(map(len, names))
        if last:
            print(f"sysdream train: training on the first three quarters ({n} syscalls); "
                  f"the last {secs:.0f} s are held out to fit the alert bound on",
                  file=sys.stderr)
        else:
            which = "the quarter before the last" if i == 1 else f"quarter {i + 1} from the end"
            print(f"sysdream train: training on all but {which} ({n} syscalls); its "
                  f"{secs:.0f} s are held out too", file=sys.stderr)
        det_i = Detector.train(names, calib_names, cfg, settings, args.confidence,
                               _progress(args, "held-out model"),
                               conds=cs if cfg.condition else None)
        if last:
            prof_i = early
        else:
            prof_i = Profile.learn(traces, sequences=args.sequences, skip=(a, b))
            prof_i.gram_default, prof_i.gram_runs = early.gram_default, early.gram_runs
        folds.append((det_i, prof_i, a, b, None if last else b))
    det = folds[0][0]
    seconds = sum(active_ns(traces, a, u) for _, _, a, _, u in folds) / 1e9
    _report(args.progress_out, {"stage": "alert bound"})
    peaks: list[float] = []
    cache: dict = {}
    for det_i, prof_i, a, b, until in folds:
        for t in traces:
            alerts_after(det_i, t, prof_i, a, b, math.inf, peaks=peaks, cache=cache,
                         until_ns=until)
    bound = fit_alert_bound(peaks, seconds, args.alert_confidence, args.confidence)
    got = []
    for det_i, prof_i, a, b, until in folds:
        det_i.alerting = bound.to_json() if bound is not None else None
        got += [alerts_after(det_i, t, prof_i, a, b, cache=cache, until_ns=until)
                for t in traces]
    alerts = sum(g["alerts"] for g in got)
    hours = max(seconds / 3600, 1e-9)
    by_exe: dict[str, int] = {}
    for g in got:
        for k, v in g["by_exe"].items():
            by_exe[k] = by_exe.get(k, 0) + v
    replay = {
        "seconds": round(seconds, 1), "folds": len(folds), "alerts": alerts,
        "per_hour": round(alerts / hours, 2),
        "excursions": len(peaks), "with_lineage_novelty":
        sum(g["with_lineage_novelty"] for g in got),
        "evidence": got[0]["evidence"], "confidence": got[0]["confidence"],
        "lineage_evidence_per_hour": prof.heldout["weight_per_hour"] if prof.heldout
        else None,
        "by_exe": by_exe}
    if bound is None:
        print(f"sysdream train: {len(peaks)} excursions of evidence in the held-out "
              f"{seconds:.0f} s: too few, or too alike, to fit an alert bound on; the "
              "daemon will alert at 3 windows' worth of evidence (one window at most 1.5), "
              f"which raised {alerts} alerts there ({replay['per_hour']:.1f} an hour)",
              file=sys.stderr)
    else:
        a = AlertBound.from_json(bound.to_json())
        own = "".join(f"; {p} {b:.2f} on its own {a.programs[p].samples}"
                      for p, b in sorted(a.bounds().items()))
        print(f"sysdream train: alert bound {a.bound:.2f} at {a.confidence:.3%} "
              f"({a.fit.transform} fit on {a.fit.samples} of {len(peaks)} excursion peaks, "
              f"KS {a.fit.ks_statistic:.3f}{own}): {a.expected_per_hour():.2f} false alerts "
              f"an hour expected; replayed on the held-out part it raised {alerts} "
              f"({replay['per_hour']:.1f} an hour)", file=sys.stderr)
    return det, replay, prof.to_json()


def _lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"--labels {path}: {exc.strerror}") from None
    out = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not out:
        raise ValueError(f"--labels {path}: lists no anomalous traces (one path per line)")
    return out


def adfa_split(root: Path, seed: int):
    from sysdream.model.evaluation import Split

    train = datasets.read_adfa_ld(root, "train")
    validation = datasets.read_adfa_ld(root, "validation")
    attack = datasets.read_adfa_ld(root, "attack")
    calib, test = _split(validation, 0.5, seed)
    return Split([s.tokens for s in train], [s.tokens for s in calib],
                 [s.tokens for s in test], [s.tokens for s in attack],
                 [s.group for s in attack], "ADFA-LD",
                 ["protocol: train Training_Data_Master; calibrate on a seeded half of "
                  f"Validation_Data_Master (seed {seed}, by file); test on the other half and "
                  "every attack trace"])


def source_file(source: str) -> str:
    """The file a sequence came from: its source less a trailing ":pid" or ":tid"."""
    head, _, tail = source.rpartition(":")
    return head if head and tail.isdigit() else source


def unm_split(root: Path, program: str, seed: int):
    from sysdream.model.evaluation import Split

    data = datasets.read_unm(root, program)
    normal = [s for s in data["normal"] if len(s.tokens)]
    if len(normal) < 4 or not data["attack"]:
        raise ValueError(f"unm:{program}: needs at least 4 normal and 1 intrusion sequence")
    train, rest = _split(normal, 0.5, seed)
    calib, test = _split(rest, 0.5, seed + 1)
    return Split([s.tokens for s in train], [s.tokens for s in calib],
                 [s.tokens for s in test], [s.tokens for s in data["attack"]],
                 ["intrusion"] * len(data["attack"]), f"UNM {program}",
                 [f"protocol: normal sequences (per pid) split by a seeded permutation (seed "
                  f"{seed}): half train, a quarter calibrate, a quarter test; all intrusion "
                  "sequences test; an intrusion file is detected when any of its sequences "
                  "is flagged"],
                 [source_file(s.source) for s in data["attack"]])


def files_split(args):
    from sysdream.model.evaluation import Split

    normal = [s for spec in args.normal for s in read_input(spec)]
    attack = [s for spec in args.attack for s in read_input(spec, "attack")]
    if len(normal) < 4 or not attack:
        raise ValueError("--dataset files needs --normal inputs (4+ sequences) and --attack")
    train, rest = _split(normal, 0.5, args.seed)
    calib, test = _split(rest, 0.5, args.seed + 1)
    return Split([s.tokens for s in train], [s.tokens for s in calib],
                 [s.tokens for s in test], [s.tokens for s in attack],
                 [s.group or "attack" for s in attack], "files",
                 attack_sources=[source_file(s.source) for s in attack])


def run_eval(args) -> int:
    from sysdream.model import evaluation
    from sysdream.model.training import ProgressLine

    names = tuple(n.strip() for n in args.baselines.split(",") if n.strip())
    chosen = [] if args.no_baselines else \
        evaluation.baselines(args.window, args.seed, names or evaluation.BASELINES)
    ds = args.dataset
    if ds == "adfa-ld" or ds.startswith("adfa-ld:"):
        root = Path(ds.partition(":")[2]) if ":" in ds else datasets_root() / "ADFA-LD"
        split = adfa_split(root, args.seed)
    elif ds.startswith("unm:"):
        split = unm_split(datasets_root() / "UNM", ds[4:], args.seed)
    elif ds == "files":
        split = files_split(args)
    else:
        raise ValueError(f"--dataset {ds!r}: use adfa-ld, unm:<program> or files")
    if args.limit:
        rng = np.random.default_rng(args.seed)
        for name in ("train", "calibrate", "test_normal"):
            seqs = getattr(split, name)
            keep = sorted(rng.permutation(len(seqs))[:args.limit])
            setattr(split, name, [seqs[i] for i in keep])
        keep = sorted(rng.permutation(len(split.test_attack))[:args.limit])
        split.test_attack = [split.test_attack[i] for i in keep]
        split.attack_groups = [split.attack_groups[i] for i in keep]
        if split.attack_sources:
            split.attack_sources = [split.attack_sources[i] for i in keep]
        split.notes.append(f"limited to {args.limit} sequences per part (--limit)")
    settings = train_settings(args)
    methods = []
    for arch in args.arch.split(","):
        for task in args.task.split(","):
            args_one = type(args)(**{**vars(args), "arch": arch, "task": task})
            methods.append(evaluation.NeuralMethod(network_config(args_one), settings,
                                                   ProgressLine()))
    methods.extend(chosen)
    if args.combine:
        methods += [evaluation.WorstPosition(methods[0]), evaluation.background(args.window)]
    report = evaluation.evaluate(split, methods, args.confidence, sys.stderr, args.combine)
    if args.transfer_fraction:
        from sysdream.model import transfer

        report["transfer"] = transfer.evaluate(methods[0].detector, split,
                                               args.transfer_fraction, args.seed)
    print(evaluation.table(report))
    if "transfer" in report:
        print(transfer.describe(report["transfer"]))
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        evaluation.plot_roc(report, args.plot)
    print(f"\nresults: {args.json}" + (f", ROC plot: {args.plot}" if args.plot else ""))
    return 0
