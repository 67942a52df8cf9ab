"""Process context from the kernel: who a process is, said at its first syscall, its exec
and its exit, read at the running kernel's offsets (BTF); exclusions the kernel vouches for
(executable by inode, uid) rather than names a process picks for itself."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from capture_helpers import drain
from speed import scaled

from sysdream.probes import btf, syscalls
from sysdream.probes.layout import (
    CONTEXT_DTYPE,
    CTX_EXEC,
    CTX_EXIT,
    CTX_NEW,
    EXE_DELETED,
    EXE_MEMFD,
    EXE_WRITABLE,
)

DATA = Path(__file__).parent / "data"
ARCH = syscalls.native_arch()
GETPPID = syscalls.number("getppid", ARCH)


def build(tmp_path: Path, source: str, name: str | None = None) -> Path:
    exe = tmp_path / (name or Path(source).stem)
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(DATA / source)], check=True)
    return exe


def path_of(r) -> str:
    parts = [bytes(p).split(b"\0")[0].decode() for p in r["path"][:int(r["path_depth"])]]
    return "/" + "/".join(reversed(parts))


def args_of(r) -> list[bytes]:
    return bytes(r["args"])[:int(r["args_len"])].rstrip(b"\0").split(b"\0")


def test_the_kernel_offsets_come_from_btf_and_the_layout_matches(capture):
    offsets = btf.kernel_offsets()
    assert all(offsets[k] >= 0 for k in btf.REQUIRED)
    assert offsets["OFF_TASK_TGID"] > offsets["OFF_TASK_PID"] > 0
    cap = capture()
    assert cap.context, cap.context_missing
    leaf = cap.bpf[b"ctx_layout"].Leaf
    assert ctypes.sizeof(leaf) == CONTEXT_DTYPE.itemsize
    for name, *_ in leaf._fields_:
        if not name.startswith("__pad"):
            assert getattr(leaf, name).offset == CONTEXT_DTYPE.fields[name][1], name


def test_btf_reader_refuses_what_is_not_btf(tmp_path):
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(btf.BtfError, match="magic"):
        btf.kernel_offsets.__wrapped__(str(bad))
    with pytest.raises(btf.BtfError, match="No such file"):
        btf.kernel_offsets.__wrapped__(str(tmp_path / "absent"))


def test_a_child_is_described_at_its_first_syscall_exec_and_exit(capture, tmp_path):
    """A fork of this test, then an exec of `env` with arguments: the records carry the
    right ids, parent, start time (the key), user, cgroup, argv and executable path."""
    cap = capture()
    child = subprocess.Popen(["/usr/bin/env", "-i", "SD=1", "/bin/true", "arg one"])
    child.wait()
    ctx, _ = drain(cap, lambda: True, 1.0)
    mine = ctx[ctx["tgid"] == child.pid]
    kinds = mine["kind"].tolist()
    assert kinds[0] == CTX_NEW and kinds[-1] == CTX_EXIT, kinds
    execs = mine[mine["kind"] == CTX_EXEC]
    assert len(execs) == 2  # env, then true (env execs it in the same process)
    assert len(set(mine["start_ns"].tolist())) == 1          # one process, one key
    new = mine[0]
    assert new["ppid"] == os.getpid() and new["uid"] == os.getuid() == new["euid"]
    mine_start = ctx[(ctx["tgid"] == os.getpid())]
    if mine_start.size:  # this test process was described too: the parent's key agrees
        assert new["parent_start_ns"] == mine_start["start_ns"][0]
    assert new["cgroup_id"] == os.stat(_my_cgroup_dir()).st_ino
    env, true = execs
    assert path_of(env) == os.path.realpath("/usr/bin/env")
    assert args_of(env) == [b"/usr/bin/env", b"-i", b"SD=1", b"/bin/true", b"arg one"]
    assert path_of(true) == os.path.realpath("/bin/true")
    assert bytes(true["filename"]).split(b"\0")[0] == b"/bin/true"
    assert args_of(true) == [b"/bin/true", b"arg one"]
    assert true["exe_ino"] == os.stat("/bin/true").st_ino
    assert true["flags"] & (EXE_MEMFD | EXE_DELETED) == 0
    assert cap.counters()["ctx_lost"] == 0


def _my_cgroup_dir() -> str:
    from sysdream.daemon.context.cgroups import mount_point

    rel = Path("/proc/self/cgroup").read_text().splitlines()[-1].split("::", 1)[1]
    return f"{mount_point()}{rel}"


def test_memfd_and_deleted_executables_are_named_and_flagged(capture, tmp_path):
    """Fileless programs: one run from a memfd, one from a file unlinked before it ran,
    both with hostile arguments, started by a parent with a hostile name."""
    spawner = build(tmp_path, "spawner.c")
    # a tmpfs of its own: the kernel's path must cross a mount, as /tmp and /dev/shm do
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    work = mnt / "deep" / "er"
    work.mkdir(parents=True)
    try:
        proc = subprocess.Popen([str(spawner), "/bin/true", str(work)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        cap = capture()
        proc.stdin.write(b"g")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=scaled(30))
        assert proc.returncode == 0
        memfd_pid, deleted_pid = (int(x) for x in out.split())
        ctx, _ = drain(cap, lambda: True, 1.0)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    hostile = [b"sd-child", b"--evil\nMar 1 fake log line", b"\x1b[2J\x07", b"\xff\xfe"]
    (mem,) = ctx[(ctx["tgid"] == memfd_pid) & (ctx["kind"] == CTX_EXEC)]
    assert mem["flags"] & EXE_MEMFD
    assert bytes(mem["exe_name"]).split(b"\0")[0] == b"memfd:sd\x1bpayload"
    assert bytes(mem["filename"]).startswith(b"/dev/fd/")
    assert args_of(mem) == hostile
    assert mem["ppid"] == proc.pid
    (dele,) = ctx[(ctx["tgid"] == deleted_pid) & (ctx["kind"] == CTX_EXEC)]
    assert dele["flags"] & EXE_DELETED and not dele["flags"] & EXE_MEMFD
    assert dele["flags"] & EXE_WRITABLE
    # the kernel's own path, across the mount it lives on, though the name is gone
    assert path_of(dele) == f"{work}/sd-deleted"
    assert args_of(dele) == hostile
    parent = ctx[(ctx["tgid"] == proc.pid) & (ctx["kind"] == CTX_NEW)]
    assert parent.size and bytes(parent[0]["comm"]).startswith(b"spawner")
    exits = ctx[(ctx["kind"] == CTX_EXIT) & np.isin(ctx["tgid"], [memfd_pid, deleted_pid])]
    assert len(exits) == 2


def test_a_pass_describes_every_process_its_chunks_name(capture, tmp_path):
    """Processes that live for a moment, read while they come and go: every child whose
    chunks a pass holds is described by that pass or an earlier one (the daemon applies
    a pass's context records first; a child gone from /proc is otherwise nobody)."""
    forks = build(tmp_path, "forks.c")
    proc = subprocess.Popen([str(forks), "3000"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    cap = capture()
    proc.stdin.write(b"g")
    proc.stdin.flush()
    passes = []
    while proc.poll() is None:
        passes.append(cap.read_pass())
    time.sleep(0.1)
    passes.append(cap.read_pass())
    kids = {int(x) for x in proc.stdout.read().split()}
    assert proc.returncode == 0 and len(kids) == 3000
    described, undescribed, seen = set(), set(), set()
    for p in passes:
        described.update(p.context["tgid"].tolist())
        named = set(p.records["tgid"].tolist()) & kids
        seen |= named
        undescribed |= named - described
    assert len(seen) > 2900 and len(passes) > 10, (len(seen), len(passes))
    assert not undescribed, sorted(undescribed)[:10]
    assert cap.counters()["ctx_lost"] == 0


def _getppids(recs: np.ndarray, pid: int) -> int:
    from sysdream.probes.streams import by_thread

    s = by_thread(recs[recs["tgid"] == pid]).get(pid)
    return 0 if s is None else int(np.sum(s.ids == GETPPID))


def test_an_excluded_executable_is_matched_by_inode_not_by_name(capture, tmp_path):
    """exclude_exes names a file: a process running it is not traced whatever it calls
    itself, and one that merely takes its name is still traced, also when the filters
    are taken again after the rename."""
    renamer = build(tmp_path, "renamer.c")
    excluded = build(tmp_path, "renamer.c", "sdexcluded")
    impostor = subprocess.Popen([str(renamer), "sdexcluded", "300"], stdin=subprocess.PIPE)
    real = subprocess.Popen([str(excluded), "innocent", "300"], stdin=subprocess.PIPE)
    kids = (impostor, real)
    cap = capture(exclude_exes=(str(excluded),), exclude_comms=("nomatch",))
    for k in kids:
        k.stdin.write(b"g")
        k.stdin.flush()
    time.sleep(0.3)
    cap.configure(cap.settings)      # a new filter generation: every verdict taken again
    for k in kids:
        k.stdin.write(b"g")
        k.stdin.flush()
    _, recs = drain(cap, lambda: all(k.poll() is not None for k in kids))
    assert _getppids(recs, impostor.pid) == 300
    assert _getppids(recs, real.pid) == 0 and not (recs["tgid"] == real.pid).any()


def test_exclusion_follows_a_replaced_file(capture, tmp_path):
    exe = build(tmp_path, "renamer.c", "sdreplaced")
    cap = capture(exclude_exes=(str(exe),))
    assert not cap.exes_changed()
    # an upgrade: a new file at the path (the old one renamed away, as dpkg does, so its
    # inode stays taken and the new file cannot get the same number)
    exe.rename(tmp_path / "sdreplaced.old")
    build(tmp_path, "renamer.c", "sdreplaced")
    assert cap.exes_changed()
    cap.configure(cap.settings)
    assert not cap.exes_changed()
    k = subprocess.Popen([str(exe), "x", "50"], stdin=subprocess.PIPE)
    k.communicate(b"gg", timeout=scaled(10))
    _, recs = drain(cap, lambda: True, 1.0)
    # traced while it was a fork of this test; not once it runs the excluded file
    assert _getppids(recs, k.pid) == 0


def test_excluded_uid_is_not_traced(capture, tmp_path):
    public = Path(tempfile.mkdtemp(prefix="sd-uid-"))   # pytest's own is 0700
    public.chmod(0o755)
    renamer = build(public, "renamer.c")
    nobody = 65534

    def as_nobody():
        os.setgid(nobody)
        os.setuid(nobody)
    other = subprocess.Popen([str(renamer), "x", "200"], stdin=subprocess.PIPE,
                             preexec_fn=as_nobody)
    mine = subprocess.Popen([str(renamer), "x", "200"], stdin=subprocess.PIPE)
    cap = capture(exclude_uids=(nobody,))
    for k in (other, mine):
        k.stdin.write(b"gg")
        k.stdin.flush()
    _, recs = drain(cap, lambda: other.poll() is not None and mine.poll() is not None)
    shutil.rmtree(public)
    assert _getppids(recs, mine.pid) == 200 and _getppids(recs, other.pid) == 0


def test_relative_path_is_bad_for_exclude_exes():
    from sysdream.probes.capture import CaptureSettings

    with pytest.raises(ValueError, match="absolute"):
        CaptureSettings(exclude_exes=("bin/true",)).validate()


def test_context_off_sends_no_context_records(capture):
    cap = capture(context=False)
    assert not cap.context and cap.read_context().size == 0
    subprocess.run(["/bin/true"])
    time.sleep(0.2)
    assert cap.read_context().size == 0 and cap.counters()["ctx_records"] == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_a_recorded_trace_keeps_who_each_process_was(ebpf_ready, tmp_path):
    """`sysdream record` writes the context records beside the syscalls; `top --replay`
    names each process's executable from them, with no /proc to ask."""
    from sysdream.probes.tracefile import read_trace

    trace = tmp_path / "t.sdtrace"
    rec = subprocess.Popen([sys.executable, "-m", "sysdream.daemon", "record",
                            "--seconds", "2", "-o", str(trace)], stderr=subprocess.PIPE,
                           text=True)
    assert "probes attached" in rec.stderr.readline()
    child = subprocess.run(["/usr/bin/env", "SD=2", "/bin/sleep", "0.3"], check=True)
    assert child.returncode == 0
    _, err = rec.communicate(timeout=scaled(60))
    assert rec.returncode == 0, err
    t = read_trace(trace)
    execs = t.context[(t.context["kind"] == CTX_EXEC)]
    sleeps = [r for r in execs if path_of(r) == os.path.realpath("/bin/sleep")]
    assert sleeps and args_of(sleeps[0]) == [b"/bin/sleep", b"0.3"]
    pid = int(sleeps[0]["tgid"])
    out = subprocess.run([sys.executable, "-m", "sysdream.daemon", "top", "--replay",
                          str(trace), "--rows", "1000"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.split()[:1] == [str(pid)])
    assert line.endswith(os.path.realpath("/bin/sleep"))


def test_a_context_block_of_another_layout_is_skipped_and_the_syscalls_kept(tmp_path):
    from sysdream.probes import tracefile
    from sysdream.probes.layout import record_dtype

    path = tmp_path / "x.sdtrace"
    header = tracefile.host_header(64)
    header["context_record_size"] = 999
    recs = np.zeros(3, record_dtype(64))
    recs["count"] = 5
    with tracefile.TraceWriter(path, header) as w:
        w.write_context(np.zeros(2, CONTEXT_DTYPE))
        w.write_records(recs)
    with pytest.warns(tracefile.TraceDamageWarning, match="process context"):
        t = tracefile.read_trace(path)
    assert t.context.size == 0 and t.records.size == 3 and t.damaged is None
