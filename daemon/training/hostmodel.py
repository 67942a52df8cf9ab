"""Fitting a host model: the network on the baseline, then the alert bound from held-out
activity (per program where a program gave enough excursions).
"""

from __future__ import annotations

import math
import sys

from sysdream.model.windows import condition_name

from .progress import _progress, _report


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

    from ..detect.evidence import AlertBound, fit_alert_bound
    from ..detect.replay import alerts_after
    from .profile import Profile, active_ns, held_out_folds

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
