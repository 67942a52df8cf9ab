"""Scheduled retraining's pieces (daemon/service/retrainer.py): the poisoning guard drops a process
around the moment its evidence came near its bound and bounds each program's share; the
held-out quarter counts recorded time, not the days between recordings; the shadow judges
the windows the model in use judges, with the same rule; allow entries' windows join the
training data; `sysdream train --recent` refuses what it cannot use in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from daemon_helpers import (
    context_record,
    quick_settings,
    records,
    sample_attack,
    sample_normal,
    tiny_config,
)
from harness import BENIGN, ODD, Daemon, learn_benign, run_script, wait_for, workload
from speed import scaled

from sysdream.daemon import config
from sysdream.daemon.alerting.allow import AllowList
from sysdream.daemon.alerting.kinds import MESSAGE_IDS
from sysdream.daemon.alerting.sinks import JsonLinesSink, Sinks
from sysdream.daemon.detect.cutter import Cutter
from sysdream.daemon.detect.queue import Counters, WindowQueue
from sysdream.daemon.detect.scorer import Scorer, ScorerSettings, Shadow
from sysdream.daemon.detect.view import ModelView
from sysdream.daemon.service.retrainer import Retrainer
from sysdream.daemon.training.guard import GUARD_SPAN_S, allowed_sequences, describe, guard
from sysdream.daemon.training.profile import active_ns, held_out_span
from sysdream.model.detector import Detector
from sysdream.probes.layout import CONTEXT_DTYPE, CTX_NEW
from sysdream.probes.tracefile import Trace, TraceWriter, host_header

S = 1_000_000_000


def trace_of(recs: list[np.ndarray], ctx: list[np.ndarray] = ()) -> Trace:
    context = np.concatenate(ctx) if len(ctx) else np.empty(0, CONTEXT_DTYPE)
    return Trace(host_header(64), np.concatenate(recs), {}, None, context)


def calls_of(recs: np.ndarray, tgid: int) -> int:
    return int(recs["count"][recs["tgid"] == tgid].sum())


def test_guard_drops_a_process_around_its_near_bound_moment_only(tiny_detector):
    """Process 20 works normally, then much later (3 guard spans) turns odd: only the odd
    part goes. Process 10, normal throughout, stays whole."""
    late = int(3 * GUARD_SPAN_S * S)
    early = records(20, sample_normal(5, 640), tgid=20, t0=1)
    odd = records(20, sample_attack(4, 640), tgid=20, seq0=len(early), t0=late)
    calls = sample_normal(3, 1280)      # one process's normal work, half of it late
    normal = records(10, calls[:640], tgid=10, t0=2)
    normal2 = records(10, calls[640:], tgid=10, seq0=len(normal), t0=late + 5)
    tr = trace_of([early, normal, odd, normal2])
    (kept,), report = guard(tiny_detector, [tr], near=0.5, share=0.25)
    k = kept.records
    assert calls_of(k, 10) == 1280, "the normal process lost syscalls"
    assert calls_of(k, 20) == 640 and k["last_ns"][k["tgid"] == 20].max() < late, \
        "process 20's odd part was learnt, or its normal part far before it dropped"
    assert report["near_bound"] == {"processes": 1, "syscalls": 640}
    assert report["kept"] == 1920 and report["syscalls"] == 2560
    assert "dropped 640 syscalls of 1 processes" in describe(report)
    # at the bound itself (near 1) the guard is no stricter than at half of it
    (at_bound,), r1 = guard(tiny_detector, [tr], near=1.0, share=0.25)
    assert len(at_bound.records) >= len(k) and r1["near_bound"]["syscalls"] <= 640


def test_guard_bounds_each_programs_share_dropping_its_latest(tiny_detector):
    """Three programs: one makes ten times what each other does. With share 0.25 (below
    the equal third, which is always allowed) the big one keeps as much as one of the
    others, its oldest."""
    ctx, recs = [], []
    for pid, exe, n in ((31, "/usr/bin/big", 6400), (32, "/usr/bin/small", 640),
                        (33, "/usr/bin/other", 640)):
        ctx.append(context_record(CTX_NEW, pid, 1, exe, pid))
        recs.append(records(pid, sample_normal(pid, n), tgid=pid, t0=10 + pid * 1000))
    tr = trace_of(recs, ctx)
    (kept,), report = guard(tiny_detector, [tr], near=1.0, share=0.25)
    k = kept.records
    assert report["near_bound"]["syscalls"] == 0
    assert calls_of(k, 32) == 640 and calls_of(k, 33) == 640
    assert calls_of(k, 31) == 640, "the big program kept more than its share"
    big = tr.records[tr.records["tgid"] == 31]
    assert k["last_ns"][k["tgid"] == 31].max() == big["last_ns"][9], "not its oldest kept"
    assert report["over_share"] == {"/usr/bin/big": 5760}


def test_held_out_quarter_counts_recorded_time_not_the_gap_between_recordings():
    def span(a_s: float, b_s: float) -> Trace:
        r = records(1, ["read"] * 2, t0=int(a_s * S))
        r["first_ns"][0], r["last_ns"][-1] = int(a_s * S), int(b_s * S)
        return trace_of([r])
    # a baseline of 100 s and, days later, a recording of 100 s: the held-out quarter is
    # the last 50 s of the recording
    base, recent = span(0, 100), span(200_000, 200_100)
    start, cut, end = held_out_span([base, recent])
    assert (start, cut, end) == (0, 200_050 * S, 200_100 * S)
    assert active_ns([base, recent], cut) == 50 * S
    # a recording shorter than the quarter: the rest comes from the end of the one before
    short = span(1000, 1020)
    _, cut, _ = held_out_span([span(0, 300), short])
    assert cut == 240 * S and active_ns([span(0, 300), short], cut) == 80 * S
    # one recording: its last quarter, as before
    assert held_out_span([base])[1] == 75 * S


def test_shadow_judges_the_same_windows_with_the_same_rule(tiny_detector):
    """A shadow of the model in use finds exactly what the model in use finds, on the
    same windows, while the main scorer's alerts go on as before."""
    view = ModelView(tiny_detector)
    counters = Counters()
    queue = WindowQueue(1 << 20, counters)
    found = []
    scorer = Scorer(view, queue, counters, found.append, ScorerSettings())
    scorer.shadow = shadow = Shadow(ModelView(tiny_detector))
    cutter = Cutter(view, queue, counters, max_threads=1024)
    cutter.ingest(np.concatenate([
        records(10, sample_normal(3, 800), tgid=10, t0=1000, exit=True),
        records(20, sample_attack(4, 800), tgid=20, t0=2000, exit=True)]))
    blocks = queue.take(1 << 16, 0.0)
    windows = sum(len(b) for b in blocks)
    scorer.process(blocks)
    got = shadow.result()
    assert found, "the attack raised nothing under the model in use"
    assert got["windows"] == windows and got["current"] == len(found)
    assert got["alerts"] == len(found) and set(got["by_exe"]) == {"worker"}
    # taken down, the scorer goes on alone
    scorer.shadow = None
    scorer.process([])
    assert shadow.result() == got


def test_allow_entries_windows_join_the_training_data(tmp_path):
    path = tmp_path / "allow.json"
    allow = AllowList.load(path)
    allow.add("exe", "/usr/bin/backup", "nightly", {"context": ["openat", "read"],
                                                    "syscalls": "read write close"})
    # no alert kept: nothing to learn
    allow.add("lineage", "* > /usr/sbin/cron > /bin/sh", "", None)
    allow.save()
    seqs = allowed_sequences(path)
    assert len(seqs) == 1 and list(seqs[0].tokens) == ["openat", "read", "read", "write",
                                                       "close"]
    doc = json.loads(path.read_text())
    doc["entries"][0]["alert"]["syscalls"] = [{"not": "a name"}]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not syscall names.*allow --remove"):
        allowed_sequences(path)


@pytest.mark.parametrize("extra, said", [
    ([], "--recent needs --guard MODEL"),
    (["--guard", "MODEL", "--guard-near", "0"], "--guard-near 0: give a fraction"),
    (["--guard", "MODEL", "--program-share", "1.5"], "--program-share 1.5: give a fraction"),
])
def test_train_recent_refuses_in_one_line(tmp_path, tiny_bundle, extra, said):
    trace = tmp_path / "recent.sdtrace"
    w = TraceWriter(trace, host_header(64))
    w.write_records(records(1, sample_normal(1, 200)))
    w.close()
    extra = [str(tiny_bundle) if x == "MODEL" else x for x in extra]
    out = subprocess.run([sys.executable, "-m", "sysdream.daemon", "train", "--input",
                          f"trace:{trace}", "--recent", str(trace), *extra, "-o",
                          str(tmp_path / "m"), "--epochs", "1"],
                         capture_output=True, text=True, timeout=scaled(120))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], out.stderr


def test_the_daemon_retrains_on_schedule_without_learning_the_odd_process(ebpf_ready,
                                                                          tmp_path, journal):
    """Learn, detect; on schedule the daemon records the host while it detects, where a
    process turns odd (and alerts): the candidate trains on the baseline and the recording
    less that process (the guard), judges the same windows as the model in use in its
    shadow, and is swapped in without a restart when it raised no more alerts there, set
    aside when it raised more (both decisions on fixed models: the test below); the odd
    process alerts under whichever model is then in use."""
    prog = workload(tmp_path)
    state = tmp_path / "state"
    cfg = tmp_path / "sysdream.toml"
    cfg.write_text("[learning]\nmin_syscalls = 1000\nmax_syscalls = 400000\nepochs = 6\n"
                   "hidden = 24\nthreads = 2\n"
                   "nice = 0\n[service]\nstatus_interval_s = 1.0\n[retraining]\n"
                   # a recording long enough for the odd process, its alert and benign
                   # work after it; the longer it is, the longer the candidate trains
                   "interval_s = 30\nrecord_seconds = 15\nshadow_seconds = 8\n"
                   "[metrics]\ndetection_internals = true\n"
                   # incidents of a second: the odd process after the retraining opens
                   # an incident of its own (an alert), not an update of the first one's
                   "[alerts]\nincident_span_s = 1\n")
    d = Daemon(["--config", str(cfg), "--state-dir", str(state), "--learn-seconds", "14",
                "--comm", "sdwork"], tmp_path, prefix=journal.prefix)
    anomaly = {"MESSAGE_ID": MESSAGE_IDS["anomaly"]}

    def state_is(name: str) -> bool:
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited {d.proc.returncode}:\n{d.stderr}")
        return d.metric(f'sysdream_retraining_state{{state="{name}"}}') == 1.0
    try:
        learn_benign(d, prog, pause=0.3)
        first = json.loads((state / "model" / "manifest.json").read_text())["model_id"]
        assert state_is("waiting") and d.metric(
            "sysdream_retraining_next_timestamp_seconds") > time.time()
        wait_for(lambda: state_is("recording"), 60, f"recording\n{d.stderr[-2000:]}")
        run_script(prog, ODD)           # a process turns odd while the host is recorded
        wait_for(lambda: journal.entries(**anomaly), 30, "the odd process's alert")
        while not state_is("training"):
            run_script(prog, BENIGN)
            time.sleep(0.3)
        wait_for(lambda: state_is("shadow"), 300, f"the candidate\n{d.stderr[-3000:]}")
        while state_is("shadow"):
            run_script(prog, BENIGN)
            time.sleep(0.3)
        done = wait_for(lambda: journal.entries(MESSAGE_ID=MESSAGE_IDS["model-retrained"])
                        or journal.entries(MESSAGE_ID=MESSAGE_IDS["retraining-rejected"]),
                        30, "the retraining's outcome")
        e = done[0]
        assert int(e["SYSDREAM_SHADOW_WINDOWS"]) > 0
        in_use = json.loads((state / "model" / "manifest.json").read_text())["model_id"]
        if e["MESSAGE_ID"] == MESSAGE_IDS["model-retrained"]:
            # no more alerts than the model in use in the shadow: in use, the one before kept
            assert int(e["SYSDREAM_CANDIDATE_ALERTS"]) <= int(e["SYSDREAM_CURRENT_ALERTS"])
            assert in_use != first and e["SYSDREAM_MODEL_ID"] == in_use
            assert json.loads((state / "model.previous" / "manifest.json").read_text()
                              )["model_id"] == first
            assert d.metric('sysdream_retrainings_total{outcome="swapped"}') == 1.0
        else:
            # a candidate that raised more (on a 30-second host, it may): set aside, the
            # model in use stays
            assert int(e["SYSDREAM_CANDIDATE_ALERTS"]) > int(e["SYSDREAM_CURRENT_ALERTS"]), \
                e["MESSAGE"]
            assert in_use == first and e["SYSDREAM_MODEL_ID"] != first
            assert json.loads((state / "model.rejected" / "manifest.json").read_text()
                              )["model_id"] == e["SYSDREAM_MODEL_ID"]
            assert d.metric('sysdream_retrainings_total{outcome="rejected"}') == 1.0
        assert list(state.glob("recent-*.sdtrace"))
        # the guard left the odd process out, and said so
        guard = [ln for ln in d.stderr.splitlines() if "guard:" in ln]
        assert guard and " of 0 processes" not in guard[0], guard
        assert d.metric("sysdream_learning_syscalls_total") <= 1_100_000
        wait_for(lambda: state_is("waiting"), 10, "the next retraining scheduled")
        # under the model in use after the decision, no restart, the odd process alerts
        before = len(journal.entries(**anomaly))
        run_script(prog, ODD)
        wait_for(lambda: len(journal.entries(**anomaly)) > before, 30,
                 "an alert for the odd process after the retraining")
        after = journal.entries(**anomaly)[-1]
        assert after["SYSDREAM_MODEL_ID"] == in_use
        rc, _ = d.stop()
        assert rc == 0
    finally:
        d.kill()


def test_the_shadow_decides_reject_a_candidate_that_alerts_more_swap_one_that_does_not(
        tmp_path, tiny_detector, tiny_bundle):
    """A candidate that learnt something else alerts on the host's normal work in its
    shadow: rejected, kept aside, the model in use stays, a warning event says both
    counts. A candidate that raises no more than the model in use is swapped in, the model
    before it kept."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copytree(tiny_bundle, state / "model")
    cfg = config.override(config.load(None), {("service", "state_directory"): str(state),
                                              ("retraining", "interval_s"): 3600})
    counters = Counters()
    queue = WindowQueue(1 << 20, counters)
    found = []
    scorer = Scorer(ModelView(tiny_detector), queue, counters, found.append)

    def shadow(view):
        if view is not None:
            scorer.shadow = Shadow(view)
            return None
        done, scorer.shadow = scorer.shadow, None
        return done.result()
    swapped = []
    events = tmp_path / "events.jsonl"
    r = Retrainer(cfg, Sinks([JsonLinesSink(str(events))], MESSAGE_IDS), lambda _: None,
                  None, None,
                  lambda p: ModelView(Detector.load(p)), shadow, lambda: swapped.append(1))
    r.begin()
    assert r.state == "waiting" and r.next_at > time.time() + 3000

    def shadowed() -> None:
        cutter = Cutter(ModelView(tiny_detector), queue, counters, max_threads=1024)
        cutter.ingest(np.concatenate([
            records(10 + i, sample_normal(i, 400), tgid=10 + i, t0=1000 * i, exit=True)
            for i in range(6)]))
        scorer.process(queue.take(1 << 16, 0.0))
        r.decide()

    # a candidate that learnt something else (a recording taken over by one odd loop):
    # the host's normal work is unknown to it
    rng = np.random.default_rng(5)
    odd = np.array(["getpid", "gettid", "getuid", "sched_yield"], dtype=object)
    Detector.train([rng.choice(odd, 150) for _ in range(40)],
                   [rng.choice(odd, 150) for _ in range(20)], tiny_config(),
                   quick_settings()).save(state / "model.candidate")
    r.try_candidate()
    assert r.state == "shadow" and scorer.shadow is not None
    shadowed()
    assert not found, "the model in use alerted on the normal work"
    ev = [json.loads(x) for x in events.read_text().splitlines()]
    assert [e["kind"] for e in ev] == ["retraining-rejected"]
    assert ev[0]["candidate_alerts"] > ev[0]["current_alerts"] == 0
    assert ev[0]["shadow_windows"] > 0 and "more alerts" in ev[0]["reason"]
    assert (state / "model.rejected" / "manifest.json").exists()
    assert not (state / "model.candidate").exists() and not swapped
    assert Detector.load(state / "model").model_id == tiny_detector.model_id
    assert r.outcomes == {"rejected": 1} and r.state == "waiting" and scorer.shadow is None

    shutil.copytree(tiny_bundle, state / "model.candidate")    # raises what the model does
    r.try_candidate()
    shadowed()
    ev = [json.loads(x) for x in events.read_text().splitlines()]
    assert ev[-1]["kind"] == "model-retrained" and ev[-1]["candidate_alerts"] == 0
    assert swapped == [1] and r.outcomes["swapped"] == 1
    assert (state / "model.previous" / "manifest.json").exists()
