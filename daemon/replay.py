"""The whole alert rule replayed on recorded activity: the daemon's own pipeline (cutter,
known-window cache, scorer, bound, per-process evidence with lineage novelty, episodes)
fed from a trace instead of the ring buffers.

`sysdream train` replays the last quarter of a host's baseline (in time) with the model it
has just trained and the lineage profile of the first three quarters, and counts what
would have alerted: the expected false alerts per hour of activity like the baseline's
(before rate limits). The network has seen most of those windows in training, so the
part of the figure that comes from windows above the bound is optimistic; the lineage
part is not, as its profile never saw the last quarter.
"""

from __future__ import annotations

import numpy as np

from .lineage import Profile
from .pipeline import Counters, Cutter, ModelView, Scorer, WindowQueue
from .processes import ProcessTable

BATCH = 4096


def alerts_after(det, trace, profile: Profile | None, after_ns: int, end_ns: int,
                 evidence_k: int = 3, evidence_m: int = 8, confidence: float = 0.0) -> dict:
    """What the rule raises on `trace`'s activity from `after_ns` to `end_ns` (kernel
    times), with `det` and `profile` (None: the sequence model alone)."""
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
        view.lineage.on_context(ctx[ctx["ns"] >= after_ns], table)
    cutter = Cutter(view, queue, counters, max_threads=1 << 20, processes=table)
    found = []
    scorer = Scorer(view, queue, counters, found.append, evidence_k, evidence_m,
                    batch_windows=512)
    recs = trace.records[trace.records["last_ns"] >= after_ns]
    recs = recs[np.argsort(recs["last_ns"], kind="stable")]
    for lo in range(0, len(recs), BATCH):
        cutter.ingest(recs[lo:lo + BATCH])
        while queue.size:
            scorer.process(queue.take(1 << 16, 0.0))
    hours = max((end_ns - after_ns) / 3.6e12, 1e-9)
    by_exe: dict[str, int] = {}
    for d in found:
        by_exe[d.block.exe or d.block.comm] = by_exe.get(d.block.exe or d.block.comm, 0) + 1
    lineage = sum(1 for d in found if d.novelty)
    return {"seconds": round((end_ns - after_ns) / 1e9, 1), "alerts": len(found),
            "per_hour": round(len(found) / hours, 2),
            "with_lineage_novelty": lineage, "windows": counters.windows_cut,
            "evidence": f"{evidence_k} of {evidence_m}", "confidence": view.bound.confidence,
            "by_exe": dict(sorted(by_exe.items(), key=lambda kv: -kv[1])[:10])}
