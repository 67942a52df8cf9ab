"""`sysdream score`: score recorded traces offline with a bundle and print the windows above
the model's window bound (one line per such window, with what explains it). It is the
sequence model alone: the daemon's alert also needs per-process evidence and weighs lineage
novelty, which `bench/replay.py` (detect/replay.py) replays on a recorded trace."""

from __future__ import annotations

import json
import sys

import numpy as np

from ..context.printable import printable
from ..exitcodes import Exit
from ..training.inputs import read_input


def run_score(args) -> int:
    from sysdream.model.detector import Detector

    inputs = [*getattr(args, "input_flag", []), *args.input]
    if not inputs:
        print("sysdream: score needs traces to score: --input FILE_OR_FOLDER ...",
              file=sys.stderr)
        return int(Exit.USAGE)

    det = Detector.load(args.model)
    b = det.bound
    print(f"model {det.model_id}: {det.cfg.arch} {det.cfg.task}, window {det.cfg.window}, "
          f"bound {b.bound:.4f} ({b.confidence:.1%})", file=sys.stderr)
    alerts = 0
    for spec in inputs:
        for seq in read_input(spec):
            r = det.score_sequence(seq.tokens)
            hits = np.nonzero(r.exceeds)[0]
            alerts += len(hits)
            line = {"source": seq.source, "syscalls": len(seq.tokens),
                    "windows": len(r.scores.score), "anomalous_windows": len(hits),
                    "trace_score": round(r.trace_score, 4), "unknown_syscalls": r.unknown}
            p = det.transfer_scores([seq.tokens])
            if p is not None:
                line["transfer_probability"] = round(float(p[0]), 4)
            if args.format == "json":
                line["alerts"] = [det.explain(r, int(i)) for i in hits[:args.max_alerts]]
                print(json.dumps(line))
                continue
            verdict = "ANOMALOUS" if len(hits) else "normal"
            print(f"{printable(seq.source)}: {verdict}, {len(hits)}/{len(r.scores.score)} "
                  f"windows above the bound, score {r.trace_score:.3f}"
                  + (f", like the labelled anomalies: p={p[0]:.2f}" if p is not None else "")
                  + (f", unknown syscalls {', '.join(r.unknown)}" if r.unknown else ""))
            for i in hits[:args.max_alerts]:
                ex = det.explain(r, int(i))
                s = ex["surprises"][0]
                print(f"  syscalls {ex['start']}-{ex['start'] + len(ex['syscalls']) - 1}: "
                      f"score {ex['score']:.3f} > {ex['bound']:.3f}; most surprising "
                      f"{s['observed']} (p={s['observed_p']:.3g}) where {s['expected']} "
                      f"(p={s['expected_p']:.2f}) was expected")
    return int(Exit.ANOMALOUS) if alerts and args.exit_status else int(Exit.OK)
