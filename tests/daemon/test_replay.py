"""The alert rule replayed on a recording (daemon/detect/replay.py): the daemon's own pipeline
fed from a trace flags the attack thread, not the normal one, and counts per hour of the
replayed span only."""

from __future__ import annotations

import numpy as np
from daemon_helpers import records, sample_attack, sample_normal

from sysdream.daemon.detect.replay import alerts_after
from sysdream.probes.layout import CONTEXT_DTYPE
from sysdream.probes.tracefile import Trace, host_header

HOUR = int(3.6e12)


def trace_of(*parts: np.ndarray) -> Trace:
    recs = np.concatenate(parts)
    return Trace(host_header(64), recs, {}, None, np.empty(0, CONTEXT_DTYPE))


def test_replay_counts_the_attack_per_hour_of_the_span(tiny_detector):
    normal = records(10, sample_normal(3, 600), tgid=10, t0=1000, exit=True)
    attack = records(20, sample_attack(4, 600), tgid=20, t0=2000, exit=True)
    tr = trace_of(normal, attack)
    got = alerts_after(tiny_detector, tr, None, 0, HOUR)
    assert got["alerts"] >= 1 and got["per_hour"] == got["alerts"]
    assert set(got["by_exe"]) == {"worker"}
    assert got["with_lineage_novelty"] == 0
    alone = alerts_after(tiny_detector, trace_of(normal), None, 0, HOUR)
    assert alone["alerts"] == 0, "the normal thread alone raises nothing"
    # only what happened after the start of the span counts, per hour of the span
    later = alerts_after(tiny_detector, tr, None, 1500, 1500 + HOUR // 2)
    assert later["alerts"] == got["alerts"] and later["per_hour"] == 2 * got["alerts"]
    assert alerts_after(tiny_detector, tr, None, 3000, HOUR)["alerts"] == 0
