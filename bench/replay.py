"""The whole alert rule replayed offline on the scenario suite's recordings, to compare
evidence settings on the same network in seconds instead of a 40-minute live run.

    .venv/bin/python bench/replay.py --model DIR/state/model --baseline DIR/normal/*.sdtrace
        [--benign REC/benign/detecting.sdtrace ...] [--attack REC/attack/*.sdtrace]
        [--sequences] [--keep-bound] [--json report.json]

The bundle is the one the suite's daemon learnt (a network trained on the baseline's
first three quarters, as `sysdream train` keeps it). As `sysdream train` does, the
lineage profile is learnt from the baseline (with each program's 6-syscall sequences with
--sequences), the rule is replayed on the baseline's held-out last quarter and the alert
bound fitted on its excursion peaks (daemon/detect/replay.py, daemon/detect/evidence.py); with
--keep-bound the bundle's own alert bound is kept instead (one `sysdream train --folds 2`
fitted on two held-out quarters, say). Then every
--benign recording (the suite's --record keeps the benign activity it judged, or another
run's baseline) is replayed from its start: the alerts there are false alerts, per hour;
and each --attack recording: alerted or not. Prints the bound, the false alerts by
program, and the attack kinds alerted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from sysdream.daemon.detect.evidence import AlertBound, fit_alert_bound
    from sysdream.daemon.detect.replay import alerts_after
    from sysdream.daemon.training.profile import Profile, held_out_span
    from sysdream.model.detector import Detector
    from sysdream.probes.tracefile import read_trace

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the suite's bundle (DIR/state/model)")
    ap.add_argument("--baseline", required=True, nargs="+", help="its baseline recordings")
    ap.add_argument("--benign", nargs="*", default=[], help="benign activity to judge")
    ap.add_argument("--attack", nargs="*", default=[], help="one recording per attack kind")
    ap.add_argument("--sequences", action="store_true", help="learn and judge each "
                    "program's 6-syscall sequences too ([learning] sequences)")
    ap.add_argument("--confidence", type=float, default=0.999,
                    help="the window bound's confidence (the model's default)")
    ap.add_argument("--evidence", type=float, nargs="*", default=[], metavar="K",
                    help="also replay at these fixed evidence thresholds (in windows at the "
                         "window bound, one for every program): two networks compared at "
                         "the same thresholds, apart from where each one's fit put its bound")
    ap.add_argument("--keep-bound", action="store_true", help="judge with the bundle's own "
                    "alert bound (alerting.json) instead of fitting one here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    det = Detector.load(args.model)
    base = [read_trace(p) for p in args.baseline]
    alpha = (1 - args.confidence) / 2
    prof, early = Profile.learn_with_heldout(base, alpha, args.sequences)
    span = held_out_span(base)
    if span is None or early is None:
        print("bench/replay.py: the baseline holds no records", file=sys.stderr)
        return 2
    _, cut, end = span
    peaks: list = []
    cache: dict = {}
    if args.keep_bound:
        bound = det.alerting and AlertBound.from_json(det.alerting)
        held = (det.training or {}).get("heldout_alerts") or {}
        peaks = [None] * int(held.get("excursions", 0))
    else:
        for t in base:
            alerts_after(det, t, early, cut, end, math.inf, peaks=peaks, cache=cache)
        bound = fit_alert_bound(peaks, (end - cut) / 1e9, None, args.confidence)
        det.alerting = bound.to_json() if bound is not None else None
    report: dict = {"sequences": args.sequences, "excursions": len(peaks),
                    "kept_bound": args.keep_bound}
    if bound:
        a = AlertBound.from_json(det.alerting)
        report["bound"] = {"shared": round(a.bound, 2), **{p: round(b, 2) for p, b in
                                                            a.bounds().items()}}
        report["expected_per_hour"] = round(a.expected_per_hour(), 2)
    print(f"alert bound {report.get('bound')} from {len(peaks)} held-out excursions"
          f"{' (the bundle own)' if args.keep_bound else ''} "
          f"(sequences {'on' if args.sequences else 'off'})")
    seconds = alerts = 0.0
    by: dict[str, int] = {}
    for path in args.benign:
        t = read_trace(path)
        s, _, e = held_out_span([t])
        got = alerts_after(det, t, prof, s, e)
        seconds += got["seconds"]
        alerts += got["alerts"]
        for k, v in got["by_exe"].items():
            by[k] = by.get(k, 0) + v
    if args.benign:
        report["benign"] = {"seconds": round(seconds, 1), "alerts": int(alerts),
                            "per_hour": round(alerts / max(seconds, 1e-9) * 3600, 1),
                            "by_exe": by}
        print(f"false alerts: {int(alerts)} in {seconds:.0f} s of benign activity "
              f"({report['benign']['per_hour']} an hour) {by}")
    kinds = {}
    for path in args.attack:
        t = read_trace(path)
        s, _, e = held_out_span([t])
        got = alerts_after(det, t, prof, s - 1, e)
        kinds[Path(path).stem] = got["alerts"]
        print(f"  {Path(path).stem:20s} {'yes' if got['alerts'] else 'no ':3s} "
              f"{got['alerts']:5d} alerts {got['by_exe']}")
    if args.attack:
        report["attacks"] = kinds
        print(f"attack kinds alerted: {sum(1 for n in kinds.values() if n)} of {len(kinds)}")
    if args.evidence:
        report["fixed"] = _fixed(det, prof, args.benign, args.attack, args.evidence)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _fixed(det, prof, benign: list, attack: list, ks: list) -> list:
    """False alerts an hour and attack kinds alerted at each fixed evidence threshold."""
    from sysdream.daemon.detect.replay import alerts_after
    from sysdream.daemon.training.profile import held_out_span
    from sysdream.probes.tracefile import read_trace

    traces = [(read_trace(p), 0) for p in benign] + [(read_trace(p), 1) for p in attack]
    out = []
    print("fixed evidence threshold: false alerts an hour, attack kinds alerted")
    for k in ks:
        seconds = alerts = kinds = 0
        for t, is_attack in traces:
            s, _, e = held_out_span([t])
            got = alerts_after(det, t, prof, s - is_attack, e, evidence_k=k)
            if is_attack:
                kinds += got["alerts"] > 0
            else:
                seconds += got["seconds"]
                alerts += got["alerts"]
        row = {"evidence": k, "per_hour": round(alerts / max(seconds, 1e-9) * 3600, 1),
               "kinds": kinds, "of": len(attack)}
        print(f"  {k:5g}  {row['per_hour']:7.1f}  {kinds} of {len(attack)}")
        out.append(row)
    return out


if __name__ == "__main__":
    sys.exit(main())
