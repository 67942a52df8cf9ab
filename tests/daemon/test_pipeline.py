"""The online pipeline on kernel-shaped chunk records: windows, cache, shedding, evidence."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from daemon_helpers import context_record, records, sample_attack, sample_normal
from speed import scaled

from sysdream.daemon.detect.block import Block
from sysdream.daemon.detect.cutter import Cutter
from sysdream.daemon.detect.queue import Counters, WindowQueue
from sysdream.daemon.detect.scorer import Scorer, ScorerSettings
from sysdream.daemon.detect.view import ModelView
from sysdream.model.windows import cut


def make(detector, capacity=100000, max_threads=1000, observe=None, peaks=None,
         **settings):
    view = ModelView(detector)
    counters = Counters()
    queue = WindowQueue(capacity, counters)
    cutter = Cutter(view, queue, counters, max_threads)
    found = []
    scorer = Scorer(view, queue, counters, found.append, ScorerSettings(**settings),
                    observe=observe, peaks=peaks)
    return view, counters, queue, cutter, scorer, found


def drain(queue):
    return queue.take(10**9, 0.0)


def test_online_windows_equal_the_offline_cut(tiny_detector):
    """Chunks arriving in pieces, with an exit, give exactly the windows `cut` gives the
    whole sequence (same targets, context and previous source)."""
    view, _c, queue, cutter, _s, _f = make(tiny_detector)
    names = sample_normal(1, 203)
    recs = records(42, names, chunk=16, exit=True)
    for i in range(0, len(recs), 3):  # the reader sees a few records at a time
        cutter.ingest(recs[i:i + 3])
    blocks = drain(queue)
    tokens = np.concatenate([view.table[b.spans] for b in blocks])
    starts = np.concatenate([b.starts for b in blocks])
    w = cut(tiny_detector.vocab.encode(names), view.p, view.s, view.task)
    assert starts.tolist() == w.start.tolist()
    p = view.p
    assert (tokens[:, :p] == w.prev).all()
    assert (tokens[:, p:2 * p] == w.src).all()
    assert (np.where(w.mask, tokens[:, 2 * p:], 0) == w.tgt).all()
    assert 42 not in cutter.threads  # freed on exit


def test_short_thread_gets_one_padded_window_at_exit(tiny_detector):
    view, _c, queue, cutter, _s, _f = make(tiny_detector)
    cutter.ingest(records(7, sample_normal(2, 3), exit=True))
    (b,) = drain(queue)
    assert len(b) == 1 and int(b.valid[0]) == 3 and int(b.starts[0]) == 0


def test_scores_match_offline_scoring_and_cache_answers_repeats(tiny_detector):
    from sysdream.model.detector import distinct_windows

    view, c, queue, cutter, scorer, _f = make(tiny_detector)
    names = sample_normal(3, 160)
    cutter.ingest(records(1, names, exit=True))
    scorer.process(drain(queue))
    offline = tiny_detector.score_sequence(names, detail=False)
    distinct = len(distinct_windows(offline.windows))
    assert distinct < len(offline.windows)  # the loop repeats windows
    # each distinct window is inferred once, repeats within the batch come from the cache
    assert c.windows_scored == distinct
    assert c.windows_scored + c.windows_cached == len(offline.windows)
    cutter.ingest(records(2, names, exit=True))  # another thread doing the same
    blocks = drain(queue)
    scorer.process(blocks)
    assert c.windows_scored == distinct  # nothing new to infer
    assert c.windows_cached == 2 * len(offline.windows) - distinct
    # and the cached scores are the model's scores
    keys = scorer.cache.keys(view.table[np.concatenate([b.spans for b in blocks])])
    hit, got = scorer.cache.lookup(keys)
    assert hit.all() and np.allclose(got, offline.scores.score, atol=1e-5)


def test_scorer_thread_gathers_misses_across_takes_and_conserves_windows(tiny_detector):
    """The scorer keeps taking queued windows until enough need the model, then scores
    them in one inference: every window is scored or answered exactly once, each distinct
    window is inferred once, and the scores equal the offline ones."""
    from sysdream.model.detector import distinct_windows

    calls = []
    view, c, queue, cutter, scorer, found = make(
        tiny_detector, batch_windows=16,
        observe=lambda what, value, n: calls.append(n) if what == "inference" else None)
    names = sample_normal(4, 400)
    for tid in range(100, 130):  # 30 threads doing the same: 30 blocks
        cutter.ingest(records(tid, names, comm="normal", exit=True))
    assert queue.size == c.windows_cut
    scorer.start()
    deadline = time.monotonic() + 30
    while queue.size and time.monotonic() < deadline:
        time.sleep(0.01)
    scorer.stop(drain_s=5)
    assert c.windows_scored + c.windows_cached == c.windows_cut
    offline = tiny_detector.score_sequence(names, detail=False)
    assert c.windows_scored == sum(calls) == len(distinct_windows(offline.windows))
    assert len(calls) < c.batches  # several takes went into one inference
    assert found == []


def test_cache_off_scores_every_window_again(tiny_detector):
    view, c, queue, cutter, scorer, _f = make(tiny_detector, cache_windows=0)
    names = sample_normal(3, 160)
    cutter.ingest(records(1, names, exit=True))
    scorer.process(drain(queue))
    first = c.windows_scored
    cutter.ingest(records(2, names, exit=True))
    scorer.process(drain(queue))
    assert first > 0 and c.windows_scored == 2 * first and len(scorer.cache) == 0
    assert c.windows_scored + c.windows_cached == c.windows_cut


def test_the_scoring_path_does_not_load_scipy(tiny_bundle):
    """scipy.stats costs the daemon 60 MB resident; the bound needs only the standard
    library's inverse normal CDF."""
    code = ("import sys\nfrom pathlib import Path\n"
            "from sysdream.model.detector import Detector\n"
            "from sysdream.daemon.detect.view import ModelView\n"
            f"v = ModelView(Detector.load(Path({str(tiny_bundle)!r})), 0.99)\n"
            "assert v.bound.bound > 0 and v.bound.z > 2.5\n"
            "print(sorted(m for m in sys.modules if m.startswith('scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_attack_raises_detections_with_explanation_and_normal_none(tiny_detector):
    """The attack's windows, far beyond the bound, complete the evidence again and again
    (each time it starts over); the normal threads never do."""
    view, c, queue, cutter, scorer, found = make(tiny_detector)
    for tid in range(10, 20):
        cutter.ingest(records(tid, sample_normal(tid, 200), comm="normal", exit=True))
    scorer.process(drain(queue))
    assert found == []
    cutter.ingest(records(99, sample_attack(5, 200), comm="attacker", exit=True))
    scorer.process(drain(queue))
    assert 1 <= len(found) <= 25 and {d.block.comm for d in found} == {"attacker"}
    d = found[0]
    assert d.block.comm == "attacker" and d.exceedances >= 3 and d.score > view.bound.bound
    ex = d.explanation
    assert len(ex["syscalls"]) == view.p and ex["surprises"]
    top = ex["surprises"][0]
    # the named position really holds the observed syscall in the thread's stream
    attack = sample_attack(5, 200)
    assert attack[top["position_in_sequence"]] == top["observed"]
    assert c.anomalous.snapshot()["unknown"] >= 3  # no process table here: exe unknown


def test_a_storm_of_detections_is_explained_in_one_batch_as_each_alone(tiny_detector):
    """Detections are explained together, one inference for all; each explanation is the
    one its window gets alone (same score, same surprises at the same positions)."""
    view, _c, queue, cutter, scorer, found = make(tiny_detector)
    for tid in range(100, 130):
        cutter.ingest(records(tid, sample_attack(tid, 200), comm="attacker", exit=True))
    scorer.process(drain(queue))
    assert len(found) >= 30 and all(d.explanation for d in found)
    for d in found:
        (alone,) = scorer.explain_many(view, [(d.block, d.row)])
        ex = d.explanation
        assert math.isclose(ex["score"], alone["score"], rel_tol=1e-4)
        assert [(x["observed"], x["position_in_sequence"]) for x in ex["surprises"]] == \
            [(x["observed"], x["position_in_sequence"]) for x in alone["surprises"]]
        assert ex["start"] == alone["start"] and ex["context"] == alone["context"]
        assert math.isclose(ex["score"], d.score, rel_tol=1e-4)


def test_a_stop_behind_a_backlog_is_bounded_and_sheds_what_is_left_counted(tiny_detector):
    """Stopping with more queued than the drain can score: the stop returns within the
    drain plus one cycle, and every window cut is scored, cached or shed (`shutdown`)."""
    view, c, queue, cutter, scorer, found = make(tiny_detector, cache_windows=0,
                                                 batch_windows=64)
    for tid in range(1000, 1400):
        cutter.ingest(records(tid, sample_attack(tid, 400), comm="attacker", exit=True))
    assert queue.size > 10000
    scorer.start()
    t0 = time.monotonic()
    scorer.stop(drain_s=0.3)
    took = time.monotonic() - t0
    assert not scorer.thread.is_alive() and took < 3.0, took
    assert c.windows_shed["shutdown"] > 0 and queue.size == 0
    assert c.windows_cut == c.windows_scored + c.windows_cached + \
        sum(c.windows_shed.values())


def test_evidence_needs_k_of_m_and_remembers_older_windows():
    from sysdream.daemon.detect.evidence import Evidence

    e = Evidence(3, 5)
    d = e.decay
    assert [e.add(1, x) for x in (True, False, False, False, False, True, True)] == [0] * 7
    assert e.add(2, True) == 0  # per process
    # the first left the last 5 and decays: 1 older + 3 recent
    assert e.add(1, True) == pytest.approx(d * d + 3)      # then reset
    assert e.add(1, True) == 0
    f = Evidence(3, 5)
    assert [f.add(1, x) for x in (True, True, True)] == [0, 0, 3]  # 3 in the last 5


def test_evidence_in_bulk_equals_one_window_at_a_time():
    from sysdream.daemon.detect.evidence import Evidence

    rng = np.random.default_rng(4)
    runs = [rng.random(int(rng.integers(1, 12))) < p for p in [0.0, 0.3, 0.0, 0.6, 0.0] * 20]
    one, bulk = Evidence(3, 8), Evidence(3, 8)
    for run in runs:
        expected = [(i, pytest.approx(n)) for i, x in enumerate(run.tolist())
                    if (n := one.add(7, x))]
        assert bulk.add_many(7, run) == expected


def test_flooding_process_is_shed_first_and_counted(tiny_detector):
    view, c, queue, cutter, scorer, _f = make(tiny_detector, capacity=64)
    cutter.ingest(records(5, sample_normal(5, 8 * 20), tgid=5, comm="quiet"))
    cutter.ingest(records(6, sample_normal(6, 8 * 400), tgid=6, comm="flood"))
    assert queue.size == 64
    shed = c.windows_shed["queue_full"]
    assert shed == c.windows_cut - 64
    blocks = drain(queue)
    per = {}
    for b in blocks:
        per[b.comm] = per.get(b.comm, 0) + len(b)
    assert per["quiet"] == 20          # untouched
    assert per["flood"] == 44
    flood_starts = np.concatenate([b.starts for b in blocks if b.comm == "flood"])
    assert flood_starts.min() > 0      # its oldest windows went first
    # the queue recovers: once drained it takes windows again without loss
    cutter.ingest(records(5, sample_normal(7, 80), tgid=5, comm="quiet", seq0=100))
    assert c.windows_shed["queue_full"] == shed


def test_take_is_round_robin_across_processes(tiny_detector):
    view, c, queue, cutter, scorer, _f = make(tiny_detector)
    cutter.ingest(records(1, sample_normal(1, 8 * 50), comm="a"))
    cutter.ingest(records(2, sample_normal(2, 8 * 50), comm="b"))
    got = queue.take(20, 0.0)
    per = {}
    for b in got:
        per[b.comm] = per.get(b.comm, 0) + len(b)
    assert sum(per.values()) == 20 and per["a"] > 0 and per["b"] > 0


def test_a_block_split_by_the_queue_keeps_every_field_but_final(tiny_detector):
    """A take that splits a block hands out its first windows as a block of their own:
    the program label, the exec marks and where the program stops being known are the
    whole block's (they were dropped once, and a script's first windows fell back to its
    interpreter's alert bound); only the rest stays the thread's final block."""
    view, c, queue, cutter, scorer, _f = make(tiny_detector)
    b = Block(tid=7, tgid=7, comm="python3", cgroup=1,
              spans=np.zeros((10, view.span), np.int32), valid=np.full(10, view.p, np.int16),
              starts=np.arange(10, dtype=np.int64) * view.s, ns=5, exe="/usr/bin/python3",
              key=(7, 1), parent=(1, 0), marks=((3, "/bin/sh"),), unsure_from=40,
              label="/usr/bin/python3 /srv/app.py", final=True)
    queue.put(b)
    head = queue.take(4, 0.0)
    assert [len(x) for x in head] == [4]
    h = head[0]
    assert h.label == "/usr/bin/python3 /srv/app.py"
    assert h.marks == ((3, "/bin/sh"),) and h.unsure_from == 40
    assert (h.key, h.parent, h.exe, h.ns) == ((7, 1), (1, 0), "/usr/bin/python3", 5)
    assert h.starts.tolist() == [0, view.s, 2 * view.s, 3 * view.s] and not h.final
    rest = drain(queue)
    assert len(rest) == 1 and len(rest[0]) == 6 and rest[0].final
    assert rest[0].label == h.label and rest[0].starts[0] == 4 * view.s
    with pytest.raises(TypeError):      # positional construction is what lost the label
        Block(7, 7, "x", 1, b.spans, b.valid, b.starts, 5)


def test_record_gap_restarts_windows_without_straddling(tiny_detector):
    view, c, queue, cutter, _s, _f = make(tiny_detector)
    names = sample_normal(9, 64 * 6)
    recs = records(3, names)
    cutter.ingest(np.concatenate([recs[:2], recs[3:]]))  # record 2 was lost
    assert c.record_gaps == 1
    blocks = drain(queue)
    starts = np.concatenate([b.starts for b in blocks])
    p = view.p
    # positions count the syscalls received; after the gap (at 128) the next target waits
    # for lead syscalls of real context
    assert not ((starts < 128) & (starts + p > 128)).any()
    assert starts[starts >= 128].min() == 128 + view.lead


def test_thread_table_is_bounded(tiny_detector):
    view, c, queue, cutter, _s, _f = make(tiny_detector, max_threads=16)
    for tid in range(100):
        cutter.ingest(records(1000 + tid, sample_normal(tid, 20)))
    assert len(cutter.threads) == 16 and c.threads_evicted == 84


def test_model_swap_with_other_geometry_sheds_queued_windows(tiny_detector, tmp_path):
    from synthetic_corpus import quick_settings, tiny_config

    from sysdream.model.detector import Detector

    view, c, queue, cutter, scorer, _f = make(tiny_detector)
    cutter.ingest(records(1, sample_normal(1, 100)))
    waiting = queue.size
    assert waiting
    rng = np.random.default_rng(0)
    other = Detector.train([sample_normal(i, 120) for i in range(20)],
                           [sample_normal(100 + i, 120) for i in range(8)],
                           tiny_config(window=4, stride=4), quick_settings(epochs=1))
    new = ModelView(other)
    cutter.set_model(new)
    scorer.set_model(new)
    assert c.windows_shed["model_change"] == waiting and queue.size == 0
    cutter.ingest(records(1, sample_normal(2, 40), seq0=2))
    blocks = drain(queue)
    assert blocks and all(b.spans.shape[1] == new.span for b in blocks)
    assert rng is not None


@pytest.mark.parametrize("bad", [0, 3])
def test_queue_capacity_is_respected_for_any_block_size(tiny_detector, bad):
    view, c, queue, cutter, _s, _f = make(tiny_detector, capacity=16)
    cutter.ingest(records(1, sample_normal(1, 8 * (17 + bad))))
    assert queue.size <= 16
    assert c.windows_cut == queue.size + c.windows_shed["queue_full"]


@pytest.mark.parametrize("parents_known", [True, False])
def test_short_lived_children_of_one_parent_are_judged_together(tiny_detector,
                                                                parents_known):
    """Ten children of one parent, each making six odd syscalls and exiting: one window
    each. Under an evidence bound that no one window reaches, none alerts alone; judged
    together as an episode they alert, naming the parent and the children; with no parent
    known, there is no episode."""
    from sysdream.daemon.context.processes import Process, ProcessTable
    from sysdream.daemon.detect.evidence import GRADED_MAX

    view, _c, queue, cutter, scorer, found = make(tiny_detector,
                                                  evidence_k=GRADED_MAX + 0.5)
    table = ProcessTable()
    for pid in range(200, 210):
        table._put(Process(pid, 1000 + pid, 77 if parents_known else 0, 500))
    cutter.processes = table
    step = ["clone", "execve", "socket", "connect", "dup2", "dup2"]
    for pid in range(200, 210):
        cutter.ingest(records(pid, step, exit=True, t0=10_000 + pid))
    scorer.process(drain(queue))
    assert all(d.episode for d in found), "no child alone reaches the bound"
    if not parents_known:
        assert not found
        return
    assert found
    ep = found[0].episode
    assert ep["parent_pid"] == 77 and len(ep["pids"]) >= 2
    assert ep["exceedances"] >= GRADED_MAX + 0.5
    assert set(ep["pids"]) <= set(range(200, 210)) and found[0].block.tgid in ep["pids"]


def test_an_episode_needs_two_processes_and_recent_windows():
    from sysdream.daemon.detect.evidence import Episodes

    ep = Episodes(3, m=8, span_s=10.0)
    hit = np.array([True])
    assert ep.add_many((1, 5), 100, np.array([True, True, True]), ns=1) == []  # one process
    got = ep.add_many((1, 5), 101, hit, ns=2)
    assert [(i, pytest.approx(n), pids) for i, n, pids in got] == [(0, 4, [100, 101])]
    ep.add_many((2, 5), 300, hit, ns=0)
    ep.add_many((2, 5), 301, hit, ns=1)
    assert ep.add_many((2, 5), 302, hit, ns=int(20e9)) == []   # the others are too old
    assert ep.add_many((), 400, hit, ns=0) == []                # no parent: no episode


def test_evidence_does_not_carry_over_to_a_process_that_reuses_a_pid(tiny_detector):
    """Windows above the bound from a process, then from the next process given the same
    pid: keyed by (pid, start), each is an excursion of its own (the first ends as its
    process is forgotten); keyed by pid alone they would be taken for one."""
    from sysdream.daemon.context.processes import Process, ProcessTable

    odd = ["clone", "execve", "socket", "connect", "dup2", "dup2", "execve", "socket"]
    got = {}
    for keyed in (False, True):
        peaks = []
        view, _c, queue, cutter, scorer, found = make(tiny_detector, evidence_k=math.inf,
                                                      peaks=peaks)
        table = ProcessTable()
        cutter.processes = table if keyed else None
        table._put(Process(300, 1000))
        cutter.ingest(records(299, odd * 2, tgid=300, t0=2000))    # a thread of the first
        scorer.process(drain(queue))
        table._put(Process(300, 5000))                 # the pid, given to a new process
        cutter.ingest(records(300, odd, exit=True, t0=6000))
        scorer.process(drain(queue))
        scorer.evidence.flush()
        assert found == [] and peaks
        got[keyed] = [p for _, p in peaks]
    assert len(got[True]) == 2 and len(got[False]) == 1, "one excursion each, or mixed up"
    # mixed up, the first's evidence decays under the second's windows: about the sum
    assert got[False][0] == pytest.approx(sum(got[True]), rel=0.02)


def test_evidence_records_each_excursion_peak_once():
    """With a recorder, an excursion (evidence above zero) ends when its windows have left
    the last m and decayed away, when its process exits, or at a flush; its peak is
    recorded once."""
    from sysdream.daemon.detect.evidence import FLOOR, Evidence

    peaks = []
    ev = Evidence(math.inf, 3, peaks=peaks)
    ev.add_many("a", np.array([0, 1.5, 0, 2.0, 0, 0, 0]), "/bin/a")
    assert peaks == []                          # left the last 3, decaying
    ev.add_many("a", np.zeros(int(math.log(FLOOR / 3.5, ev.decay)) + 2), "/bin/a")
    assert peaks == [("/bin/a", 3.5)]           # 1.5 and 2.0 two windows apart: one
    ev.add_many("b", np.array([4.0]), "/bin/b")
    ev.add_many("c", np.array([1.0, 0.5]))
    ev.forget("b")
    assert peaks == [("/bin/a", 3.5), ("/bin/b", 4.0)]
    ev.flush()
    assert peaks[2:] == [("", 1.5)] and ev.peak == {}
    capped = Evidence(3, 8)
    assert capped.add_many("d", np.array([2.5, 0, 0.4])) == []
    assert capped.add_many("d", np.array([0.2])) == [(0, pytest.approx(3.1))]


def test_a_window_weighs_its_rarity_under_the_window_bound():
    """1 at the bound, more the rarer, at most GRADED_MAX; 0 below the bound."""
    from sysdream.daemon.detect.evidence import GRADED_MAX, graded
    from sysdream.model.calibration import GaussianBound

    b = GaussianBound(0.0, 1.0, 0.999, "identity", 0.0, 1.0, 100)
    alpha = (1 - b.confidence) / 2
    scores = np.array([0.0, b.bound + 1e-9, 4.5, 50.0])
    w = graded(b, alpha, scores, b.exceeds(scores))
    assert w[0] == 0 and w[1] == pytest.approx(1, abs=1e-6)
    assert 1.2 < w[2] < 2.5 and w[3] == GRADED_MAX


def test_a_lone_short_process_alerts_as_soon_as_it_stands_out(tiny_detector):
    """Under a model with no alert bound: a process whose two windows (of 8) are syscalls
    the model never saw (far beyond the bound) alerts at once, exit or not, saying what it
    reached against what was needed. One such window alone (a thread's odd exit) does not:
    it weighs at most half the evidence needed. A normal short process raises nothing."""
    from sysdream.daemon.alerting import fields
    from sysdream.daemon.detect.view import DEFAULT_EVIDENCE, FALLBACK_WINDOW_MAX

    view, _c, queue, cutter, scorer, found = make(tiny_detector)
    assert view.alert is None and scorer.evidence.window_max == FALLBACK_WINDOW_MAX
    odd = ["clone", "execve", "socket", "connect", "dup2", "dup2"]
    cutter.ingest(records(401, sample_normal(8, 7), exit=True, t0=200))
    scorer.process(drain(queue))
    assert found == []
    cutter.ingest(records(402, odd, exit=True, t0=150))     # one odd window, then exit
    scorer.process(drain(queue))
    assert found == []
    cutter.ingest(records(400, odd * 3, t0=100))       # still running: no exit record
    scorer.process(drain(queue))
    d = found[0]
    assert d.block.tgid == 400 and d.exceedances >= DEFAULT_EVIDENCE == d.needed
    assert fields.anomaly_fields(d)["evidence"].startswith(
        f"{d.exceedances:.3g} >= {DEFAULT_EVIDENCE:g} in")
    # an operator's evidence_exceedances: windows weigh their full rarity again
    scorer.set_rules(3, 8)
    assert scorer.evidence.window_max > DEFAULT_EVIDENCE
    cutter.ingest(records(403, odd, exit=True, t0=300))
    scorer.process(drain(queue))
    assert [d.block.tgid for d in found] == [400, 403]


def test_a_window_made_before_an_exec_is_named_after_the_program_before_it(tiny_detector):
    """A fork of `sdwork` makes odd syscalls and then execs `wc`: the windows before the
    exec are sdwork's (its name, and the time at which the process table says who ran)."""
    from sysdream.probes.layout import REC_EXEC

    view, _c, queue, cutter, scorer, found = make(tiny_detector)
    odd = ["clone", "execve", "socket", "connect", "dup2", "dup2", "execve", "socket"]
    before = records(50, odd * 2, comm="sdwork", chunk=8, t0=100)
    before[-1]["flags"] |= REC_EXEC
    after = records(50, sample_normal(3, 24).tolist(), comm="wc", chunk=8, seq0=2, t0=300,
                    exit=True)
    cutter.ingest(np.concatenate([before, after]))
    blocks = drain(queue)
    b = blocks[0]
    assert b.exec_at == 16 and b.comm == "wc"
    assert b.who(0, view.p) == (int(before[-1]["last_ns"]), "sdwork", True)  # 0-7
    assert b.who(len(b) - 1, view.p) == (b.ns, "wc", False)                # after the exec


def test_lineage_novelty_completes_the_evidence_and_is_listed(tiny_detector, tiny_bundle,
                                                              tmp_path):
    """A program making a syscall its profile never saw in 10^11 calls alerts on that
    alone (weight over 3), though no window is above the bound; a window far from it
    carries no novelty; a model without a profile, or with lineage off, gives none."""
    import copy

    from sysdream.daemon.alerting import fields
    from sysdream.daemon.training.profile import Profile

    names = sample_normal(21, 400)
    rare = str(names[200])      # never seen by the program's profile
    seen = {str(n): 10**10 for n in names if str(n) != rare}
    det = copy.copy(tiny_detector)
    det.lineage = Profile(programs={"/bin/w": 5}, syscalls={"/bin/w": seen}, execs=100,
                          fileless=0).to_json()
    found = []
    for lineage in (True, False):
        view = ModelView(det, lineage=lineage)
        counters = Counters()
        queue = WindowQueue(100000, counters)
        cutter = Cutter(view, queue, counters, 100)
        scorer = Scorer(view, queue, counters, found.append)
        cutter.ingest(records(5, names, tgid=5))
        blocks = drain(queue)
        for b in blocks:
            b.exe, b.key = "/bin/w", (5, 1)
        scorer.process(blocks)
        if lineage:
            assert len(found) == 1, "the new syscall alone completes the evidence"
            (d,) = found
            assert [e["kind"] for e in d.novelty] == ["new_syscall"]
            assert d.novelty[0]["what"] == f"/bin/w: {rare}" and d.novelty[0]["weight"] > 3
            first = [str(n) for n in names].index(rare)
            row_start = int(d.block.starts[d.row])
            assert row_start <= first < row_start + view.p, "on the first window holding it"
            assert d.score <= view.bound.bound, "no window above the bound was needed"
            f = fields.anomaly_fields(d)
            assert f["novelty"] == d.novelty and "new to this host: new_syscall" in \
                fields.message(f)
            (tmp_path / "a.json").write_text(json.dumps(f) + "\n")
            out = subprocess.run([sys.executable, "-m", "sysdream.daemon", "explain",
                                  "--json", str(tmp_path / "a.json"), "--model",
                                  str(tiny_bundle)], capture_output=True, text=True,
                                 timeout=scaled(120))
            assert out.returncode == 0, out.stderr
            assert f"new to this host: new_syscall /bin/w: {rare}" in out.stdout
        else:
            assert len(found) == 1, "lineage off: nothing more"


def test_an_exec_whose_context_comes_a_read_late_still_names_the_new_program(tiny_detector):
    """The reader may take an exec's chunk record in the pass after the one that read the
    context ring: the thread asks the process table again on its next records, so the
    windows after the exec are the new program's and those before the old one's."""
    from sysdream.daemon.context.processes import ProcessTable
    from sysdream.probes.layout import CTX_EXEC, CTX_NEW, REC_EXEC

    view, _c, queue, cutter, _s, _f = make(tiny_detector)
    table = ProcessTable(proc="/nonexistent")
    cutter.processes = table
    table.ingest(context_record(CTX_NEW, 60, 100, "/usr/bin/python3", 11))
    before = records(60, sample_normal(5, 40), chunk=8, t0=100)
    before[-1]["flags"] |= REC_EXEC
    cutter.ingest(before)                      # the exec's context not read yet
    assert cutter.threads[60].exe == "/usr/bin/python3"
    table.ingest(context_record(CTX_EXEC, 60, 104, "/usr/bin/dash", 12))
    cutter.ingest(records(60, sample_normal(6, 40), chunk=8, seq0=5, t0=200, exit=True))
    blocks = drain(queue)
    late = [b for b in blocks if int(b.starts[-1]) >= 40]
    assert late and all(b.exe == "/usr/bin/dash" for b in late)
    assert all(b.exe_before == "/usr/bin/python3" and b.exec_at == 40 for b in late)


def test_a_long_lived_process_is_not_judged_young_at_its_exit(tiny_detector):
    """Its exit's records give two blocks (the last full windows, then the end window):
    only the last is final, and the process's evidence goes with it."""
    view, _c, queue, cutter, scorer, found = make(tiny_detector)
    names = list(sample_normal(9, 203)) + ["clone", "execve", "socket", "connect", "dup2",
                                            "dup2"]
    cutter.ingest(records(600, names, tgid=600, exit=True))
    blocks = drain(queue)
    assert len(blocks) >= 2 and [b.final for b in blocks] == [False] * (len(blocks) - 1) + [
        True]
    scorer.process(blocks)
    assert 600 not in scorer.evidence.recent


def test_each_syscall_is_judged_against_the_program_that_made_it(tiny_detector):
    """A process runs A, execs B, which execs C, all within one read: A's syscalls are
    A's, B's are B's (each exec's own record included), C's are C's. A profile that knows
    each program's own syscalls only finds nothing new; one that swapped B and C would."""
    import copy

    from sysdream.daemon.context.processes import ProcessTable
    from sysdream.daemon.training.profile import Profile
    from sysdream.probes.layout import CTX_EXEC, CTX_NEW, REC_EXEC

    parts = {"/bin/a": ["read", "write", "close"] * 8, "/bin/b": ["openat", "mmap"] * 12,
             "/bin/c": ["getpid", "brk", "munmap"] * 8}
    recs, seq = [], 0
    for n, (exe, names) in enumerate(parts.items()):
        r = records(70, names, chunk=8, seq0=seq, t0=100 * (n + 1), exit=exe == "/bin/c")
        if exe != "/bin/c":
            r[-1]["flags"] |= REC_EXEC
        seq += len(r)
        recs.append(r)

    def judge(known: dict) -> list:
        det = copy.copy(tiny_detector)
        det.lineage = Profile(programs={e: 9 for e in parts}, syscalls={
            e: {n: 10**9 for n in known[e]} for e in parts}, execs=100).to_json()
        view = ModelView(det)
        counters = Counters()
        queue = WindowQueue(100000, counters)
        table = ProcessTable(proc="/nonexistent")
        table.ingest(context_record(CTX_NEW, 70, 50, "/bin/a", 1))
        # an exec's context is stamped just before its record, as the kernel does
        table.ingest(context_record(CTX_EXEC, 70, 101, "/bin/b", 2))
        table.ingest(context_record(CTX_EXEC, 70, 201, "/bin/c", 3))
        cutter = Cutter(view, queue, counters, 100, table)
        alerted = []
        scorer = Scorer(view, queue, counters, alerted.append)
        cutter.ingest(np.concatenate(recs))
        scorer.process(drain(queue))
        return [e["what"] for d in alerted for e in d.novelty] + \
            [e["what"] for evs in scorer.novelty.novel.values() for _, e in evs]

    assert judge({e: set(n) for e, n in parts.items()}) == []
    swapped = judge({"/bin/a": set(parts["/bin/a"]), "/bin/b": set(parts["/bin/c"]),
                     "/bin/c": set(parts["/bin/b"])})
    assert "/bin/b: openat" in swapped and "/bin/c: getpid" in swapped


def test_a_sequence_its_program_never_made_completes_the_evidence(tiny_detector):
    """The profile holds every 6-call sequence /bin/w made; the same calls again raise
    nothing, two of them swapped make a run of new sequences: an event on the window
    holding the swap, worth its probability, which alone completes the evidence."""
    import copy

    from sysdream.daemon.training.profile import Profile, stream_grams
    from sysdream.probes import syscalls

    names = [str(n) for n in sample_normal(21, 400)]
    arch = syscalls.native_arch()
    at = next(i for i in range(200, 300) if names[i] != names[i + 1])
    swapped = names[:at] + [names[at + 1], names[at]] + names[at + 2:]
    det = copy.copy(tiny_detector)
    prof = Profile(programs={"/bin/w": 5}, syscalls={"/bin/w": {n: 10**9 for n in names}},
                   execs=100)
    prof.grams = {"/bin/w": np.unique(stream_grams(syscalls.number_array(names, arch))[5:])}
    prof.gram_runs, prof.gram_default, prof.arch = {"/bin/w": 1e-12}, 1e-3, arch
    det.lineage = prof.to_json()

    def run(stream: list[str], tgid: int) -> tuple[list, Scorer]:
        view, counters, queue, cutter, _, _ = make(det)
        found = []
        scorer = Scorer(view, queue, counters, found.append)
        cutter.ingest(records(tgid, stream, tgid=tgid))
        blocks = drain(queue)
        for b in blocks:
            b.exe, b.key = "/bin/w", (tgid, 1)
        scorer.process(blocks)
        return found, scorer

    found, scorer = run(names, 5)
    assert found == [] and not scorer.novelty.novel
    found, scorer = run(swapped, 6)
    assert len(found) == 1, "the run of new sequences alone completes the evidence"
    (d,) = found
    kinds = {e["kind"] for e in d.novelty}
    assert kinds == {"new_sequence"} and d.novelty[0]["weight"] > 3
    first = d.novelty[0]["what"]
    assert first.startswith("/bin/w: ") and len(first.split(": ")[1].split()) == 6
    row_start = int(d.block.starts[d.row])
    assert row_start <= at + 1 < row_start + d.model.p + 6
    assert d.novelty[0]["what"].split()[-1] in (names[at], names[at + 1])


def test_an_exec_s_news_go_to_the_first_window_after_it(tiny_detector):
    """A fork of /bin/a makes 16 syscalls and execs /bin/b (never seen): the block cut
    after the exec starts with /bin/a's window, and the exec's event goes to the first
    window holding /bin/b's syscalls, where the evidence of the new program builds up."""
    import copy

    from sysdream.daemon.context.processes import ProcessTable
    from sysdream.daemon.training.profile import Profile
    from sysdream.probes.layout import CTX_EXEC, CTX_NEW, REC_EXEC

    det = copy.copy(tiny_detector)
    det.lineage = Profile(programs={"/bin/a": 50}, syscalls={}, execs=100).to_json()
    view = ModelView(det)
    counters = Counters()
    queue = WindowQueue(100000, counters)
    table = ProcessTable(proc="/nonexistent")
    ctx = np.concatenate([context_record(CTX_NEW, 70, 50, "/bin/a", 1),
                          context_record(CTX_EXEC, 70, 101, "/bin/b", 2)])
    table.ingest(ctx)
    view.lineage.on_context(ctx, table)
    before = records(70, sample_normal(2, 16).tolist(), chunk=8, t0=100)
    before[-1]["flags"] |= REC_EXEC
    after = records(70, sample_normal(3, 40).tolist(), chunk=8, seq0=2, t0=300, exit=True)
    cutter = Cutter(view, queue, counters, 100, table)
    scorer = Scorer(view, queue, counters, lambda d: None)
    cutter.ingest(np.concatenate([before, after]))
    (b,) = drain(queue)
    assert b.exec_at == 16 and b.starts[0] == 0, "the block begins before the exec"
    scorer.process([b])
    (pos, event), = scorer.novelty.novel[b.key]
    assert event["kind"] == "new_program" and event["what"] == "/bin/b"
    assert pos == 16, "on the window after the exec, not the block's first"


def test_a_conditioned_model_judges_each_process_as_its_program(tmp_path):
    """Two programs run the same loop and differ at its end (one writes, one sends). With
    a model conditioned on the program, the pipeline heads every window's context with
    its process's program: the sender sending passes, the writer sending alerts. Its
    scores equal the offline conditioned windows'."""
    from daemon_helpers import program_loop, quick_settings, tiny_config

    from sysdream.daemon.context.processes import ProcessTable
    from sysdream.model.detector import Detector
    from sysdream.model.scoring import score
    from sysdream.model.windows import condition, condition_name, count, cut
    from sysdream.probes.layout import CTX_NEW

    rng = np.random.default_rng(4)
    seqs, conds = [], []
    for _ in range(30):
        seqs += [program_loop(rng, 160, "write"), program_loop(rng, 160, "sendto")]
        conds += [condition_name("/usr/bin/files"), condition_name("/usr/bin/net")]
    det = Detector.train(seqs, None, tiny_config(condition="decoder"),
                         quick_settings(epochs=20, patience=4), conds=conds)
    view, _c, queue, cutter, scorer, found = make(det)
    assert view.conditioned
    table = ProcessTable(proc="/nonexistent")
    cutter.processes = table
    for pid, exe in ((71, "/usr/bin/net"), (72, "/usr/bin/files"), (73, "/usr/bin/new")):
        table.ingest(context_record(CTX_NEW, pid, 50, exe, pid))
    sends = program_loop(rng, 320, "sendto")
    for pid in (71, 72, 73):
        cutter.ingest(records(pid, sends, tgid=pid, t0=100 * pid, exit=True))
    blocks = drain(queue)
    scorer.process(blocks)
    def above(pid: int) -> float:      # the share of a process's windows above the bound
        b = next(b for b in blocks if b.tgid == pid)
        t = view.tokens(b.spans, [b], np.zeros(len(b), np.int64))
        return float(view.bound.exceeds(scorer.cache.lookup(scorer.cache.keys(t))[1]).mean())
    # a program it never saw (73) reads as the unknown program, for which the loop's end
    # is either call: how surprising that is depends on training, and is not asserted
    alerted = {d.block.tgid for d in found}
    assert 72 in alerted and 71 not in alerted, \
        ([(d.block.tgid, d.block.exe) for d in found], {p: above(p) for p in (71, 72, 73)})
    # what the pipeline scored is what the model scores offline under that program
    b = next(b for b in blocks if b.tgid == 72)
    w = condition(cut(det.vocab.encode(sends), det.cfg.window, det.cfg.stride, "predict-next"),
                  np.full(count(len(sends), det.cfg.window, det.cfg.stride),
                          det.condition_id("@/usr/bin/files")))
    offline = score(det.net, w, 256, detail=False).score
    at = np.searchsorted(w.start, b.starts)
    online = scorer.cache.lookup(scorer.cache.keys(
        view.tokens(b.spans, [b], np.zeros(len(b), np.int64))))[1]
    # float32 in batches of other shapes: equal to 1e-4 relative (an odd window's mean NLL
    # can be tens of nats, where 1e-4 absolute is a few float32 ulps)
    assert np.allclose(online, offline[at], rtol=1e-4, atol=1e-4), \
        float(np.abs(online - offline[at]).max())
    # its alert explains what the network read: the program's token heads the context
    # (and the previous source), where the thread's own syscall was replaced
    d = next(d for d in found if d.block.tgid == 72)
    ex = scorer.explain_many(view, [(d.block, d.row)])[0]
    assert ex["context"][0] == "@/usr/bin/files" == ex["context"][view.p]
    assert "@/usr/bin/files" not in ex["syscalls"]
