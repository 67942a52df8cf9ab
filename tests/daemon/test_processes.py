"""The process table fed by the kernel, and the parts an alert is made of: a reused pid is
another process, lineage, cgroups and containers, escaping, grouping and bounded labels."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import daemon_helpers  # noqa: F401 (puts tests/probes on the path for capture_helpers)
import pytest
from capture_helpers import drain

from sysdream.daemon.alerting import fields, ratelimit
from sysdream.daemon.context.cgroups import describe
from sysdream.daemon.context.printable import command_line, printable, reprinted
from sysdream.daemon.context.processes import ProcessTable
from sysdream.daemon.metrics.labels import ExeLabels


def spawn_with_pid(pid: int, argv: list[str], tries: int = 50) -> subprocess.Popen | None:
    """Start `argv` as process `pid` (the kernel's next pid is set through ns_last_pid,
    as CRIU does): the way to make a pid come back without cycling through all of them."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(argv)
        if p.pid == pid:
            return p
        p.wait()
    return None


def test_a_reused_pid_never_gets_the_old_process_context(capture):
    """Spawn until a pid comes back: windows of the new process are named after it, those
    of the old one after the old one, though both had the same pid."""
    cap = capture()
    first = subprocess.Popen(["/bin/sleep", "0.05"])
    first.wait()
    second = spawn_with_pid(first.pid, ["/usr/bin/env", "-i", "SECOND=1", "/bin/true"])
    if second is None:
        pytest.fail(f"pid {first.pid} did not come back (something else took it 50 times)")
    second.wait()
    ctx, recs = drain(cap, lambda: True, 1.0)
    table = ProcessTable()
    table.ingest(ctx)
    pid = first.pid
    mine = recs[recs["tgid"] == pid]
    assert len(table.by_pid[pid]) == 2, "two processes, two keys"
    second_start = table.by_pid[pid][1][1]
    t_first = int(mine["last_ns"][mine["last_ns"] < second_start].max())  # its last record
    t_second = int(mine["last_ns"].max())
    old, new = table.context(pid, t_first), table.context(pid, t_second)
    assert old["argv"] == ["/bin/sleep", "0.05"] and old["exe"].endswith("/sleep")
    assert new["argv"] == ["/bin/true"] and new["exe"] == os.path.realpath("/bin/true")
    assert old["process_start_ns"] < new["process_start_ns"] <= t_second
    assert old["lineage"][0]["pid"] == new["lineage"][0]["pid"] == os.getpid()


def test_process_table_is_bounded_and_counts_evictions(capture):
    cap = capture()
    kids = [subprocess.Popen(["/bin/true"]) for _ in range(20)]
    for k in kids:
        k.wait()
    ctx, _ = drain(cap, lambda: True, 1.0)
    table = ProcessTable(max_processes=16)
    table.ingest(ctx)
    assert len(table) == 16 and table.evicted >= 4
    # exited processes go once they are older than keep_exited_s
    table.keep_exited_ns = 0
    table.expire(time.monotonic_ns() + 1)
    assert all(not p.exited_ns for p in table.entries.values())
    assert table.expired >= 20 - table.evicted


def test_a_process_the_kernel_never_described_is_read_from_proc():
    """A process asleep since before capture began (and its parents) comes from /proc."""
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    try:
        time.sleep(0.1)
        table = ProcessTable()
        ctx = table.context(sleeper.pid)
        assert ctx["context_source"] == "procfs" and ctx["argv"] == ["/bin/sleep", "30"]
        assert ctx["exe"] == os.path.realpath("/bin/sleep")
        assert ctx["lineage"][0]["pid"] == os.getpid()
        assert table.from_procfs >= 2
    finally:
        sleeper.kill()
        sleeper.wait()
    assert ProcessTable().lookup(sleeper.pid) is None     # gone: nothing made up


@pytest.mark.parametrize("path,unit,runtime,cid", [
    ("/system.slice/nginx.service", "nginx.service", "", ""),
    ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", "", ""),
    ("/system.slice/docker-" + "a" * 64 + ".scope", "docker-" + "a" * 64 + ".scope",
     "docker", "a" * 64),
    ("/docker/" + "b" * 64, "", "docker", "b" * 64),
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
     "cri-containerd-" + "c" * 64 + ".scope", "cri-containerd-" + "c" * 64 + ".scope",
     "containerd", "c" * 64),
    ("/machine.slice/libpod-" + "d" * 64 + ".scope/container",
     "libpod-" + "d" * 64 + ".scope", "podman", "d" * 64),
    ("/system.slice/crio-" + "e" * 64 + ".scope", "crio-" + "e" * 64 + ".scope", "cri-o",
     "e" * 64),
    ("/kubepods/besteffort/pod123/" + "f" * 64, "", "containerd", "f" * 64),
    ("/lxc.payload.web1", "", "lxc", "web1"),
    ("/machine.slice/machine-db.scope", "machine-db.scope", "systemd-nspawn", "db"),
])
def test_cgroup_paths_name_units_and_containers(path, unit, runtime, cid):
    g = describe(path)
    assert (g.unit, g.container_runtime, g.container_id) == (unit, runtime, cid)


def test_hostile_names_are_escaped_and_never_merged():
    assert printable(b"evil\n\x1b[31mx\x07") == "evil\\n\\x1b[31mx\\x07"
    assert printable(b"\xff\xfe") == "\\xff\\xfe"
    assert printable("\\xff") == "\\\\xff"              # a literal backslash is doubled ...
    assert printable(b"\xff") != printable("\\xff")      # ... so the two never read alike
    assert printable(b"\xe2\x80\xa8ok") == "\\u2028ok"    # a Unicode line separator
    assert printable("caf\u00e9") == "caf\u00e9"          # printable text stays as it is
    assert printable(b"\xc3") != printable(b"\xc4")       # distinct bad bytes stay distinct
    line = command_line([b"sh", b"-c", b"id; ls", b"it's", b""])
    assert line == "sh -c 'id; ls' 'it'\"'\"'s' ''"
    assert shlex.split(line) == ["sh", "-c", "id; ls", "it's", ""]   # a shell reads it back
    assert reprinted("a\\nb\x1b") == "a\\nb\\x1b"        # escaped once, not twice


def test_rate_limit_by_fingerprint_with_a_ceiling_and_nothing_lost():
    rl = ratelimit.RateLimiter(burst=2, interval=60.0, ceiling=3)
    got = [rl.allow("a", now=0.0, about={"exe": "/x"}) for _ in range(5)]
    assert [g[0] for g in got] == [True, True, False, False, False]
    assert [g[2] for g in got] == [1, 2, 3, 4, 5]                 # incident count
    assert rl.allow("b", now=0.0)[0] is True                      # another fingerprint
    assert rl.allow("c", now=0.0)[0] is False                     # the ceiling (3/minute)
    summary = rl.take_summary()
    assert {s["fingerprint"]: s["count"] for s in summary} == {"a": 3, "c": 1}
    assert summary[0]["exe"] == "/x" and rl.take_summary() == []
    sent, suppressed, count = rl.allow("a", now=61.0)              # refilled
    assert sent and suppressed == 3 and count == 6


def test_fingerprint_groups_the_same_story():
    ctx = {"exe": "/usr/bin/id", "lineage_text": "systemd > nginx > sh > id"}
    s = [{"observed": "execve"}]
    a = fields.fingerprint(ctx, ["ptrace"], s)
    assert a == fields.fingerprint(dict(ctx), ["ptrace"], [{"observed": "read"}])
    assert a != fields.fingerprint({**ctx, "lineage_text": "systemd > sshd > bash > id"},
                                   ["ptrace"], s)
    # which never-seen syscalls a window holds is where it falls in the process
    assert a == fields.fingerprint(ctx, ["exit_group", "ptrace"], s)
    assert a != fields.fingerprint(ctx, [], s)
    assert fields.fingerprint(ctx, [], s) != fields.fingerprint(ctx, [], [{"observed": "read"}])


def test_exe_labels_give_alerting_executables_priority():
    labels = ExeLabels(limit=3)
    windows, sent = labels.counter(), labels.counter()
    for exe in ("/junk/1", "/junk/2", "/junk/3", "/junk/4"):
        windows.add(exe)
    assert set(windows.snapshot()) == {"/junk/1", "/junk/2", "/junk/3", "other"}
    windows.add("/usr/sbin/nginx", alerted=True)
    sent.add("/usr/sbin/nginx", alerted=True)
    snap = windows.snapshot()
    assert "/usr/sbin/nginx" in snap and "/junk/1" not in snap and len(snap) == 4
    assert labels.evictions == 1
    for i in range(10):                     # a flood of new alerting names: bounded
        sent.add(f"/tmp/evil{i}", alerted=True)
    assert len(sent.snapshot()) <= 4
    before = windows.snapshot()["other"]
    windows.add("/junk/9")
    assert windows.snapshot()["other"] == before + 1       # series only grow


def test_top_shows_hostile_names_escaped():
    from daemon_helpers import records

    from sysdream.daemon.commands.top import summarise

    recs = records(7, ["read"] * 10, comm="x")
    recs["comm"] = b"ev\x1b[2J\nil\xff"
    rows = summarise(recs, 5)
    assert rows == [(7, "ev\\x1b[2J\\nil\\xff", 10)]


def test_an_interpreters_script_names_its_program_for_the_alert_bound():
    from sysdream.daemon.context.processes import program_label

    py = "/usr/bin/python3.11"
    assert program_label(py, [b"python3", b"-u", b"/srv/app.py", b"--port", b"80"]) == \
        f"{py} /srv/app.py"
    assert program_label(py, [b"python3", b"-c", b"import os"]) == f"{py} -c"
    assert program_label(py, [b"python3", b"-m", b"http.server"]) == f"{py} -m http.server"
    assert program_label(py, [b"python3"]) == py
    assert program_label("/usr/bin/dash", [b"sh", b"-c", b"id"]) == "/usr/bin/dash -c"
    assert program_label("/usr/bin/tar", [b"tar", b"czf", b"x"]) == "/usr/bin/tar"
    assert program_label("memfd:x", [b"t"], memfd=True) == "memfd:*"
    assert program_label(py, [b"python3", b"\xff\xfe.py"]).startswith(f"{py} ")
