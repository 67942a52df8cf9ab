"""`sysdream eval`: the model and the baselines on ADFA-LD, UNM or labelled files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from sysdream.probes import datasets

from ..training.inputs import datasets_root, read_input
from .train import network_config, train_settings


def _split(seqs: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split by sequence (file or pid): `fraction` of them in the second part."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(seqs))
    cut = len(seqs) - max(1, int(round(len(seqs) * fraction)))
    return [seqs[i] for i in sorted(order[:cut])], [seqs[i] for i in sorted(order[cut:])]


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

    if args.plot:           # the default draws: without matplotlib, say so before the work
        from .plots import pyplot
        pyplot("--plot '' for no ROC plot")
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
    as_json = getattr(args, "format", "text") == "json"
    if not as_json:
        print(evaluation.table(report))
        if "transfer" in report:
            print(transfer.describe(report["transfer"]))
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        evaluation.plot_roc(report, args.plot)
    where = f"results: {args.json}" + (f", ROC plot: {args.plot}" if args.plot else "")
    if as_json:
        print(json.dumps(report))
        print(where, file=sys.stderr)
    else:
        print(f"\n{where}")
    return 0
