"""The live scenario suite: learn a benign workload, then detect it and ten attack kinds.

    .venv/bin/python bench/scenarios.py [--learn-seconds 600] [--benign-seconds 1200]
        [--kinds memfd-exec,reverse-shell] [--record DIR] [--compare] [--sequences]
        [--folds 2] [--whole-host] [--seed N] [--json report.json]

Loopback only, on the real kernel and a real systemd-journald (bench/scenarios/suite.py
says how; benign.py what the host normally does; attacks.py each attack kind). Prints for
each attack kind whether it ran, whether it was alerted and the time to its first alert;
the false alerts per hour of benign activity (after detection starts: the benign workload
alone for --benign-seconds, then beside the attacks) and the programs that raised them.
--json keeps the whole report, every alert in it. --compare runs a second daemon beside the
first, from the same model with `[detection] lineage = false`: the same activity judged
with and without lineage novelty.

--record DIR keeps labelled recordings for `sysdream eval`: DIR/normal holds the daemon's
baseline (what it learnt), DIR/attack one trace per attack kind (a recorder on that kind's
cgroup while it runs), DIR/benign the benign activity the daemon judged (for offline
replays of the false alerts):

    sysdream eval --dataset files --normal DIR/normal --attack DIR/attack
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "scenarios"))
from suite import Suite, table  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learn-seconds", type=float, default=600)
    ap.add_argument("--benign-seconds", type=float, default=1200,
                    help="benign activity alone before the attacks (the false-alert figure "
                         "also counts the time beside them)")
    ap.add_argument("--epochs", type=int, default=15, help="[learning] epochs (default 15, "
                    "the daemon's own)")
    ap.add_argument("--settle-seconds", type=float, default=6)
    ap.add_argument("--kinds", default="", help="attack kinds, comma-separated (default all)")
    ap.add_argument("--record", type=Path, default=None, metavar="DIR",
                    help="keep labelled recordings for sysdream eval (see above)")
    ap.add_argument("--compare", action="store_true", help="a second daemon detects "
                    "beside the first with [detection] lineage = false (same model, same "
                    "activity)")
    ap.add_argument("--sequences", action="store_true", help="[learning] sequences = true: "
                    "the daemon also learns each program's 6-syscall sequences")
    ap.add_argument("--folds", type=int, default=1, choices=(1, 2, 3), help="[learning] "
                    "folds: quarters of the baseline held out to fit the alert bound on")
    ap.add_argument("--condition", default="", choices=("", "head", "decoder"),
                    help="[learning] condition: the network conditioned on the program")
    ap.add_argument("--whole-host", action="store_true", help="trace every process on the "
                    "host (no cgroup filter, as a user runs it): the host's own activity "
                    "counts as benign")
    ap.add_argument("--seed", type=int, default=1, help="run N: the benign workload learns "
                    "with seeds 3N-2 and 3N and is judged with 3N-1 (default 1: 1, 3, 2)")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="the whole report, every alert in it")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a "
                    "temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sysdream-scenarios-"))
    suite = Suite(work, args.learn_seconds, args.benign_seconds, epochs=args.epochs,
                  settle_s=args.settle_seconds,
                  kinds=[k for k in args.kinds.split(",") if k] or None, record=args.record,
                  compare=args.compare, sequences=args.sequences, folds=args.folds,
                  condition=args.condition, whole_host=args.whole_host,
                  seed=args.seed)
    # a stop (Ctrl-C, SIGTERM) still takes the cgroups, journald and daemons down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = suite.run()
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.record:
        print(f"\nrecordings: sysdream eval --dataset files --normal {args.record}/normal "
              f"--attack {args.record}/attack; bench/replay.py --model {work}/state/model "
              f"--baseline {args.record}/normal/*.sdtrace --benign {args.record}/benign/*"
              f" --attack {args.record}/attack/*.sdtrace")
    return 0


if __name__ == "__main__":
    sys.exit(main())
