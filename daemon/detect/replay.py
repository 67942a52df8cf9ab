"""The whole alert rule replayed on recorded activity: the daemon's own pipeline (cutter,
known-window cache, scorer, bound, per-process evidence with lineage novelty, episodes)
fed from a trace instead of the ring buffers.

`sysdream train` (daemon/commands/train.py) replays the last quarter of a host's baseline (in time)
with a model and a lineage profile learnt from the first three quarters only: once with no
alert bound, recording the peak of every excursion of evidence (daemon/detect/evidence.py) to fit
the alert bound on, and once more with that bound, counting what the whole rule raises
there (before rate limits). The second pass takes its window scores from the first's
cache.
"""

from __future__ import annotations

import numpy as np

from ..context.processes import ProcessTable
from ..training.profile import Profile
from .cache import WindowCache
from .cutter import Cutter
from .evidence import Episodes, Evidence
from .queue import Counters, WindowQueue
from .scorer import Scorer, ScorerSettings
from .view import ModelView

BATCH = 4096


def alerts_after(det, trace, profile: Profile | None, after_ns: int, end_ns: int,
                 evidence_k: float = 0, evidence_m: int = 8, confidence: float = 0.0,
                 peaks: list | None = None, cache: dict | None = None, near: float = 1.0,
                 found: list | None = None, until_ns: int | None = None) -> dict:
    """What the rule raises on `trace`'s activity from `after_ns` to `end_ns` (kernel
    times), with `det` and `profile` (None: the sequence model alone). `evidence_k`: what
    the evidence must reach (0: the model's alert bound; math.inf with `peaks` to record
    the excursion peaks there instead). `cache`: a dict kept across calls, holding the
    window scores already known per model geometry. `near`: alert where the evidence
    reaches that fraction of what it must reach (the retraining guard, daemon/service/retrainer.py).
    `found`: a list the detections are appended to. `until_ns`: nothing from that time on
    is replayed (a held-out fold inside the recording; by default everything after
    `after_ns` is)."""
    saved = det.lineage
    det.lineage = profile.to_json() if profile is not None else None
    try:
        view = ModelView(det, confidence, trace.arch)
    finally:
        det.lineage = saved
    counters = Counters()
    queue = WindowQueue(1 << 40, counters)
    table = ProcessTable(max_processes=max(1024, 2 * len(trace.context)), keep_exited_s=1e9,
                         proc="/nonexistent")
    table.ingest(trace.context)
    if view.lineage is not None:
        ctx = trace.context
        top = ctx["ns"] < until_ns if until_ns is not None else True
        view.lineage.on_context(ctx[(ctx["ns"] >= after_ns) & top], table)
    cutter = Cutter(view, queue, counters, max_threads=1 << 20, processes=table)
    out = found
    found = []
    scorer = Scorer(view, queue, counters, found.append,
                    ScorerSettings(evidence_k, evidence_m, batch_windows=512), peaks=peaks)
    if near != 1.0:
        e = scorer.evidence
        scorer.evidence = Evidence(e.k * near, e.m, peaks=peaks,
                                   bounds={p: b * near for p, b in e.bounds.items()},
                                   window_max=e.window_max)
        scorer.episodes = Episodes(e.k * near, e.m)
    if cache is not None:
        scorer.cache = cache.setdefault((det.model_id, id(det), view.span),
                                        WindowCache(1 << 21, view.span))
    recs = trace.records[trace.records["last_ns"] >= after_ns]
    if until_ns is not None:
        recs = recs[recs["last_ns"] < until_ns]
    recs = recs[np.argsort(recs["last_ns"], kind="stable")]
    for lo in range(0, len(recs), BATCH):
        cutter.ingest(recs[lo:lo + BATCH])
        while queue.size:
            scorer.process(queue.take(1 << 16, 0.0))
    scorer.evidence.flush()
    if out is not None:
        out.extend(found)
    hours = max((end_ns - after_ns) / 3.6e12, 1e-9)
    by_exe: dict[str, int] = {}
    for d in found:
        by_exe[d.block.exe or d.block.comm] = by_exe.get(d.block.exe or d.block.comm, 0) + 1
    lineage = sum(1 for d in found if d.novelty)
    return {"seconds": round((end_ns - after_ns) / 1e9, 1), "alerts": len(found),
            "per_hour": round(len(found) / hours, 2),
            "with_lineage_novelty": lineage, "windows": counters.windows_cut,
            "evidence": f"{scorer.evidence.k:.3g} over {evidence_m} windows",
            "confidence": view.alert.confidence if view.alert is not None and not evidence_k
            else view.bound.confidence,
            "by_exe": dict(sorted(by_exe.items(), key=lambda kv: -kv[1])[:10])}
