"""Lineage novelty (daemon/training/profile.py) from real context records: a shell's loop recorded
by the real capture program is the baseline; a second run with a new child and a program
executed from a memfd is judged against it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import daemon_helpers  # puts tests/probes on the path for capture_helpers
import numpy as np
import pytest
from capture_helpers import drain

from sysdream.daemon.context.processes import ProcessTable
from sysdream.daemon.detect.evidence import Evidence
from sysdream.daemon.detect.judge import Judge
from sysdream.daemon.training.profile import (
    GRAM,
    MEMFD,
    GramTable,
    Profile,
    active_ns,
    held_out_folds,
    held_out_span,
    stream_grams,
    weight,
)
from sysdream.probes import syscalls
from sysdream.probes.tracefile import Trace, host_header

BASELINE = "for i in $(seq 40); do /bin/true; /bin/echo x > /dev/null; done; " \
           "for i in 1 2 3; do /usr/bin/env true; done"
MEMFD_RUN = ("import os; fd = os.memfd_create('x'); os.write(fd, open('/bin/true', 'rb')"
             ".read()); os.execv(f'/proc/self/fd/{fd}', ['t'])")


def record(capture, cg: Path, cmds: list[list[str]]) -> Trace:
    """Run the commands one after the other inside the cgroup, traced; the trace."""
    cap = capture(include_cgroups=(cg.stat().st_ino,))

    def enter() -> None:
        (cg / "cgroup.procs").write_text("0")
    for cmd in cmds:
        subprocess.run(cmd, preexec_fn=enter, check=True, stdout=subprocess.DEVNULL,
                       timeout=60)
    ctx, recs = drain(cap, lambda: True, 1.0)
    return Trace(host_header(recs.dtype["ids"].shape[0]), recs, {}, None, ctx)


def test_profile_learns_programs_edges_and_syscalls_and_judges_novelty(capture, group):
    cgroup = group[2]
    base = record(capture, cgroup, [["/bin/bash", "-c", BASELINE]])
    prof = Profile.learn([base], sequences=True)
    bash, true, echo = (str(Path(p).resolve()) for p in ("/bin/bash", "/bin/true",
                                                          "/bin/echo"))
    env = str(Path("/usr/bin/env").resolve())
    assert prof.edges[bash][true] == 40 and prof.edges[bash][echo] == 40
    assert prof.edges[bash][env] == 3 and prof.edges[env][true] == 3
    assert prof.execs >= 86 and prof.fileless == 0
    assert "execve" in prof.syscalls[bash] and "clone" in str(prof.syscalls[bash])
    # the unseen mass, from the baseline: bash started the same children 80 times and one
    # (seq) once, so another new one is rare; env started one child three times, so a new
    # one is not
    assert prof.p_new_child(bash) < 0.02 < 0.1 < prof.p_new_child(env)

    # the baseline replayed against its own profile holds no news at all: every exec,
    # every syscall and every sequence is attributed to the program that learning
    # attributed it to
    assert base.context.size and Profile.from_json(prof.to_json()).replay(base, 0) == []
    assert len(prof.grams[bash]) > 10 and prof.arch == base.arch
    assert not Profile.learn([base]).grams, "sequences are learnt when asked"
    prof.gram_default = 1e-3        # what learn_with_heldout sets: they go into the JSON
    again = Profile.from_json(prof.to_json())
    assert again.grams.keys() == prof.grams.keys() and all(
        np.array_equal(again.grams[p], prof.grams[p]) for p in prof.grams)
    assert again.sequence_runs(base, 0) == []

    # through JSON and back, as in a bundle
    prof = Profile.from_json(prof.to_json())
    later = record(capture, cgroup, [["/bin/bash", "-c", "/bin/true; /usr/bin/id >/dev/null"],
                                     [sys.executable, "-c", MEMFD_RUN]])
    table = ProcessTable(proc="/nonexistent")
    table.ingest(later.context)
    judge = Judge(prof, later.arch, alpha=0.0005)
    judge.on_context(later.context, table)
    events = [e for evs in judge.pending.values() for e in evs]
    kinds = {(e.kind, e.what) for e in events}
    idp = str(Path("/usr/bin/id").resolve())
    # id was never run: a new program, and a child bash never started; the rarer counts
    new = next(e for e in events if e.what.endswith(idp))
    assert new.p == min(prof.p_new_program(), prof.p_new_child(bash))
    assert ("fileless_exec", MEMFD) in kinds
    assert not any(e.what.endswith(f"-> {true}") for e in events), "a known edge is no news"
    fileless = next(e for e in events if e.kind == "fileless_exec")
    assert fileless.p == 1 / (prof.execs + 2)

    # a syscall bash never made: an event the first time a process makes it, not again
    ptrace = syscalls.number("ptrace", later.arch)
    rows = np.full((3, 4), syscalls.number("read", later.arch), np.int32)
    rows[1, 2] = rows[2, 0] = ptrace
    got = judge.new_syscalls((1, 1), bash, rows)
    assert [(r, e.kind, e.what) for r, e in got] == [(1, "new_syscall", f"{bash}: ptrace")]
    assert judge.new_syscalls((1, 1), bash, rows) == []
    assert len(judge.new_syscalls((2, 1), bash, rows)) == 1, "another process: news again"
    assert judge.new_syscalls((3, 1), "/no/such/program", rows) == []


def test_new_sequences_are_runs_once_per_process_and_never_across_a_thread_start():
    """Judge.new_sequences on spans of a known stream with one call changed: one event
    for the run of GRAM new sequences it ends, naming the calls; none again in that
    process, one in another; none for a sequence reaching before the thread's start
    (PAD), but the first whole one after it; none for targets another program made, none
    for a profile of another architecture or one without sequences."""
    arch = syscalls.native_arch()
    names = (["read", "write", "close", "openat", "mmap", "fstat"] * 30)[:160]
    ids = syscalls.number_array(names, arch).astype(np.int64)
    prof = Profile(programs={"/bin/w": 1}, arch=arch, gram_default=1e-4,
                   gram_runs={"/bin/w": 2e-5})
    prof.grams = {"/bin/w": np.unique(stream_grams(ids)[GRAM - 1:])}
    lead, p = 32, 16
    spans = np.stack([ids[s - lead:s + p] for s in (64, 80, 96)])
    judge = Judge(prof, arch, alpha=0.0005)
    assert judge.new_sequences((1, 1), "/bin/w", spans, lead) == []
    odd = spans.copy()
    odd[1, lead + 3] = syscalls.number("ptrace", arch)
    got = judge.new_sequences((1, 1), "/bin/w", odd, lead)
    want = " ".join(names[80 - GRAM + 4:80 + 3]) + " ptrace"
    assert [(r, e.kind, e.what, e.p) for r, e in got] == \
        [(1, "new_sequence", f"/bin/w: {want}", 2e-5)]
    assert judge.new_sequences((1, 1), "/bin/w", odd, lead) == [], "news once a process"
    assert len(judge.new_sequences((2, 1), "/bin/w", odd, lead)) == 1
    # the thread started one call before the changed one: the sequences reaching before
    # its start are none; the first whole one is news
    young = odd.copy()
    young[1, :lead + 2] = 65536
    first = " ".join([names[82], "ptrace", *names[84:88]])
    assert [(r, e.what) for r, e in judge.new_sequences((3, 1), "/bin/w", young, lead)] \
        == [(1, f"/bin/w: {first}")]
    # the thread's last call was before the end of the window (a padded exit window):
    # the sequences reaching past it are none
    ended = spans.copy()
    ended[1, lead + 8:] = 65536
    assert judge.new_sequences((8, 1), "/bin/w", ended, lead) == []
    mine = np.ones((3, p), bool)
    mine[1, :8] = False         # another program made these targets
    assert judge.new_sequences((4, 1), "/bin/w", odd, lead, mine) == []
    assert judge.new_sequences((5, 1), "/bin/other", odd, lead) == []
    assert Judge(Profile(**{**vars(prof), "arch": "aarch64"}), arch, 0.0005
                 ).new_sequences((6, 1), "/bin/w", odd, lead) == []
    assert Judge(Profile(programs={"/bin/w": 1}), arch, 0.0005
                 ).new_sequences((7, 1), "/bin/w", odd, lead) == []


def test_the_held_out_quarter_sets_each_program_s_rate_of_new_sequences():
    """/bin/a repeats one pattern throughout; a second /bin/b process, in the last quarter
    only, makes calls in an order the first never did. The profile of the first three
    quarters meets runs of new sequences in /bin/b only, so /bin/b's news is rated more
    likely (weighs less) than /bin/a's, and the profile of everything holds both."""
    from sysdream.probes.layout import CTX_NEW

    rd = ["read", "write", "close", "openat", "fstat", "mmap", "munmap", "brk"]
    a = daemon_helpers.records(10, rd * 250, chunk=8, t0=1000)            # ns 1000-1249
    b1 = daemon_helpers.records(20, (rd[::-1] * 50), chunk=8, t0=1000)    # 1000-1049
    b2 = daemon_helpers.records(30, (rd[::2] + rd[1::2]) * 20, chunk=8, t0=1200)
    ctx = np.concatenate([daemon_helpers.context_record(CTX_NEW, t, 10, exe, t)
                          for t, exe in ((10, "/bin/a"), (20, "/bin/b"), (30, "/bin/b"))])
    recs = np.concatenate([a, b1, b2])
    trace = Trace(host_header(8), recs, {}, None, ctx)
    assert Profile.learn_with_heldout([trace], 0.0005)[0].to_json()["sequences"] is None
    prof, early = Profile.learn_with_heldout([trace], alpha=0.0005, sequences=True)
    assert set(early.grams) == {"/bin/a", "/bin/b"} and prof.arch == trace.arch
    assert len(prof.grams["/bin/b"]) > len(early.grams["/bin/b"])
    runs = early.sequence_runs(trace, held_out_span([trace])[1])
    assert runs and {p for p, _ in runs} == {"/bin/b"}
    assert prof.heldout["kinds"] == {"new_sequence": len(runs)}
    assert prof.gram_runs == early.gram_runs
    assert prof.gram_runs["/bin/a"] < prof.gram_default < prof.gram_runs["/bin/b"]
    assert weight(prof.p_new_sequence("/bin/a"), 0.0005) > \
        weight(prof.p_new_sequence("/bin/b"), 0.0005)
    assert prof.p_new_sequence("/bin/never") == prof.gram_default
    # the whole profile has nothing new to say about the recording it learnt
    assert Profile.from_json(prof.to_json()).sequence_runs(trace, 0) == []


def test_held_out_folds_are_the_newest_quarters_of_recorded_time_and_a_fold_is_unseen():
    """Two recordings with a day between them: the folds are quarters of the recorded
    time (the gap not counted), newest first, each ending where the next newer begins, the
    first the held-out span's; a profile learnt around a fold never saw its programs."""
    from sysdream.probes.layout import CTX_NEW

    day = 86_400 * 10**9
    rd = ["read", "write", "close", "openat"]

    def ctx(*procs):
        return np.concatenate([daemon_helpers.context_record(CTX_NEW, tid, at, exe, tid)
                               for tid, at, exe in procs])
    first = Trace(host_header(4), daemon_helpers.records(10, rd * 100, chunk=4, t0=1000),
                  {}, None, ctx((10, 1000, "/bin/a")))                  # ns 1000-1099
    late = np.concatenate([daemon_helpers.records(20, rd * 100, chunk=4, t0=day),
                           daemon_helpers.records(30, ["getpid"] * 40, chunk=4,
                                                  t0=day + 30)])        # a day on: 0-99
    second = Trace(host_header(4), late, {}, None,
                   ctx((20, day, "/bin/a"), (30, day + 30, "/bin/odd")))
    trace = [first, second]
    total = active_ns(trace, 0)
    folds = held_out_folds(trace, 2)
    assert len(folds) == 2 and folds[0][1] == held_out_span(trace)[2]
    assert folds[0][0] == held_out_span(trace)[1] and folds[1][1] == folds[0][0]
    for a, b in folds:
        assert active_ns(trace, a, b) == pytest.approx(total / 4, abs=2)
    assert folds[1][0] >= day, "the day between the recordings is not recorded time"
    assert held_out_folds(trace, 9) == held_out_folds(trace, 3)
    a, b = folds[1]
    assert a <= day + 30 < b
    around = Profile.learn(trace, skip=(a, b))
    assert "/bin/odd" not in around.programs and "/bin/a" in around.programs
    assert "/bin/odd" in Profile.learn(trace).programs


def test_the_gram_table_answers_exactly_per_program():
    """The open-addressing table agrees with a search of each program's sorted hashes,
    for hashes it holds, hashes it does not, and the same hash under another program."""
    rng = np.random.default_rng(4)
    a = np.unique(rng.integers(1, 2**63, 30000).astype(np.uint64))
    b = np.unique(np.r_[a[:500], rng.integers(1, 2**63, 3000).astype(np.uint64)])
    table = GramTable({"/bin/a": a, "/bin/b": b})
    assert len(table.table) >= 2 * (len(a) + len(b))
    q = np.r_[a[::7], b[::3], rng.integers(1, 2**63, 20000).astype(np.uint64)]
    for prog, known in (("/bin/a", a), ("/bin/b", b)):
        want = np.isin(q, known)
        assert want.any() and not want.all()
        assert np.array_equal(table.contains(q, prog), want)
    assert not table.contains(q, "/bin/c").any()
    assert table.contains(q.reshape(-1, 1), "/bin/a").shape == (len(q), 1)
    assert not GramTable({}).contains(q, "/bin/a").any()


def test_novelty_weights_complete_the_evidence():
    alpha = 0.0005
    assert weight(alpha, alpha) == pytest.approx(1)
    assert weight(alpha ** 2, alpha) == pytest.approx(2)
    assert weight(0.5, alpha) < 0.1 and weight(1.0, alpha) == 0
    ev = Evidence(3, 8)
    # one window above the bound and a novelty worth 1.6: not yet 3
    assert ev.add_many("p", np.array([0.0, 1.0, 1.6])) == []
    got = ev.add_many("p", np.array([0.0, 0.5]))
    assert [i for i, _ in got] == [1] and got[0][1] == pytest.approx(3.1)
    assert ev.add_many("q", np.zeros(5)) == []


@pytest.mark.parametrize("doc, why", [
    ([], "not a lineage profile"),
    ({"format": 1, "programs": {"a": -1}, "edges": {}, "syscalls": {}, "execs": 1,
      "fileless": 0}, "programs must map names to counts"),
    ({"format": 1, "programs": {}, "edges": {"a": {"b": "x"}}, "syscalls": {}, "execs": 1,
      "fileless": 0}, "edges['a'] must map names to counts"),
    ({"format": 1, "programs": {}, "edges": {}, "syscalls": [], "execs": 1,
      "fileless": 0}, "syscalls must be an object"),
    ({"format": 1, "programs": {}, "edges": {}, "syscalls": {}, "execs": 1.5,
      "fileless": 0}, "execs must be a count"),
    ({"format": 1, "programs": {}, "edges": {}, "syscalls": {}, "execs": 1,
      "fileless": 0, "seconds": float("nan")}, "seconds must be a finite number"),
])
def test_a_hostile_profile_is_refused(doc, why):
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        Profile.from_json(doc)


GOOD = {"format": 1, "programs": {}, "edges": {}, "syscalls": {}, "execs": 1, "fileless": 0}
SEQ = {"length": GRAM, "arch": "x86_64", "default_p": 0.001, "p": {}, "hashes": {}}


@pytest.mark.parametrize("seq, why", [
    ([], "sequences must hold"),
    ({**SEQ, "length": 4}, "sequences must hold"),
    ({**SEQ, "default_p": 1.5}, r"default_p must be in \[0, 1\)"),
    ({**SEQ, "p": {"/bin/a": -1}}, "p.'/bin/a'. must be in"),
    ({**SEQ, "hashes": {"/bin/a": "not base64!"}}, "not base64 of 8-byte hashes"),
    ({**SEQ, "hashes": {"/bin/a": "AAAA"}}, "not base64 of 8-byte hashes"),
    ({**SEQ, "hashes": {"/bin/a": "AgAAAAAAAAABAAAAAAAAAA=="}}, "not sorted and unique"),
])
def test_a_hostile_sequence_table_is_refused(seq, why):
    with pytest.raises(ValueError, match=why):
        Profile.from_json({**GOOD, "sequences": seq})


def test_an_exec_records_syscalls_belong_to_the_program_before_it(capture, group):
    """The chunk record that ends with an exec is stamped as the exec is done, after the
    new program's context record; its syscalls are still the old program's."""
    trace = record(capture, group[2], [[sys.executable, "-c", "import os; os.getpgrp(); "
                                        "os.execv('/bin/true', ['true'])"]])
    prof = Profile.learn([trace])
    true = str(Path("/bin/true").resolve())
    python = next(p for p in prof.syscalls if "python" in p and "getpgrp" in
                  prof.syscalls[p])
    assert "execve" in prof.syscalls[python]
    assert "getpgrp" not in prof.syscalls[true] and "execve" not in prof.syscalls[true]
