"""Lineage novelty (daemon/lineage.py) from real context records: a shell's loop recorded
by the real capture program is the baseline; a second run with a new child and a program
executed from a memfd is judged against it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import daemon_helpers  # noqa: F401 (puts tests/probes on the path for capture_helpers)
import numpy as np
import pytest
from capture_helpers import drain

from sysdream.daemon.evidence import Evidence
from sysdream.daemon.lineage import MEMFD, Judge, Profile, weight
from sysdream.daemon.processes import ProcessTable
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
    prof = Profile.learn([base])
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

    # the baseline replayed against its own profile holds no news at all: every exec and
    # every syscall is attributed to the program that learning attributed it to
    assert base.context.size and Profile.from_json(prof.to_json()).replay(base, 0) == []

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
