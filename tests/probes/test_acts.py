"""Acts on the real kernel: what a process wrote, read, connected to, changed and ran,
with the arguments that say so; program identity (device, inode, mount namespace)."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from sysdream.probes import acts
from sysdream.probes.capture import CaptureSettings, kernel_dev
from sysdream.probes.layout import (
    ACT_DTYPE,
    CTX_EXEC,
    EXE_FOREIGN_MNT,
    EXE_USERNS_MNT,
    TASK_FOREIGN_MNTNS,
)

DATA = Path(__file__).parent / "data"


def read_all(cap, until, timeout: float = 10.0) -> tuple[np.ndarray, list[acts.Act]]:
    """(context records, acts) read until `until()` holds, then a short drain."""
    ctx, found = [], []
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline and done < 5:
        cap.wait(0.02)
        ctx.append(cap.read_context())
        found += acts.decode(cap.read_acts())
        cap.read()
        if until():
            done += 1
    return np.concatenate(ctx), found


def test_act_layout_matches_compiled_program(capture):
    cap = capture()
    assert cap.acts
    leaf = cap.bpf[b"act_layout"].Leaf
    assert ctypes.sizeof(leaf) == ACT_DTYPE.itemsize
    for name, *_ in leaf._fields_:
        if not name.startswith("__pad"):
            assert getattr(leaf, name).offset == ACT_DTYPE.fields[name][1], name


def test_each_act_is_seen_with_its_arguments(capture, tmp_path):
    child_exe = tmp_path / "acts_child"
    subprocess.run(["gcc", "-O1", "-o", str(child_exe), str(DATA / "acts_child.c")],
                   check=True)
    work = tmp_path / "work"
    work.mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_key").write_text("k")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    cap = capture(sensitive_paths=(f"{secret}/",))
    child = subprocess.Popen([str(child_exe), str(work), str(secret / "id_key"), str(port)],
                             stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, child.returncode
    listen_port = int(out)
    server.close()
    ctx, found = read_all(cap, lambda: True)
    mine = [a for a in found if a.tgid == child.pid]
    by_kind: dict[str, list[acts.Act]] = {}
    for a in mine:
        by_kind.setdefault(a.kind, []).append(a)
    assert all(a.start_ns == mine[0].start_ns for a in mine)

    writes = by_kind["write"]
    (w,) = [a for a in writes if a.path == f"{work}/written.txt".encode()]
    assert w.open_flags & (os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == \
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    assert not w.flags & (acts.TRUNCATED | acts.RELATIVE | acts.FAULT)
    (cut,) = [a for a in writes if a.flags & acts.TRUNCATED]
    assert len(cut.path) == 255 and cut.path.startswith(f"{work}/000".encode())
    (rel,) = [a for a in writes if a.path == b"relative.txt"]
    assert rel.flags & acts.RELATIVE and not rel.flags & acts.DIRFD
    assert rel.nr == 257 and rel.open_flags & os.O_RDWR
    (ren,) = by_kind["rename"]
    assert ren.path == f"{work}/written.txt".encode()
    assert ren.path2 == f"{work}/renamed.txt".encode()
    (chm,) = by_kind["chmod"]
    assert chm.path == ren.path2 and chm.args[1] == 0o600
    (unl,) = by_kind["unlink"]
    assert unl.path == ren.path2

    (rd,) = by_kind["read"]     # /etc/hostname is not sensitive: only the key
    assert rd.path == str(secret / "id_key").encode()

    (con,) = by_kind["connect"]  # three connects to one peer: one act
    assert con.peer == (socket.AF_INET, "127.0.0.1", port)
    (bnd,) = by_kind["bind"]
    assert bnd.peer == (socket.AF_INET, "127.0.0.1", 0)
    (lis,) = by_kind["listen"]
    assert lis.peer == (socket.AF_INET, "127.0.0.1", listen_port) and lis.flags & acts.LOCAL

    (sid,) = by_kind["setid"]
    assert sid.nr == 105 and sid.args[0] == os.getuid()
    (pt,) = by_kind["ptrace"]
    assert pt.args[0] == 16 and pt.args[1] == 999999999      # PTRACE_ATTACH, target
    (mfd,) = by_kind["memfd"]
    assert mfd.path == b"sd-acts-memfd"
    first, ex = by_kind["exec"]     # the fork of this test runs the child, then true
    assert first.path == str(child_exe).encode()
    assert ex.path == b"/bin/true"
    assert ex.argv_hash == acts.argv_hash(b"/bin/true\0acts child\0")
    assert ex.aux2 == len(b"/bin/true\0acts child\0")
    assert cap.counters()["act_lost"] == 0

    # identity: the exec's context record names the file and the mount namespace
    _, rec = ctx[(ctx["tgid"] == child.pid) & (ctx["kind"] == CTX_EXEC)]
    st = os.stat("/bin/true")
    assert (int(rec["exe_dev"]), int(rec["exe_ino"])) == (kernel_dev(st.st_dev), st.st_ino)
    assert rec["mntns"] == os.stat("/proc/self/ns/mnt").st_ino
    assert not rec["flags"] & (EXE_FOREIGN_MNT | EXE_USERNS_MNT | TASK_FOREIGN_MNTNS)


def test_a_payload_bound_over_a_system_binary_keeps_its_own_identity(capture, tmp_path):
    """`unshare -Urm; mount --bind payload /usr/bin/env`: the exec names /usr/bin/env,
    but its file is the payload's, its mount namespace another, and the mount one a user
    namespace made."""
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is needed for this test")
    payload = tmp_path / "payload"
    shutil.copy("/bin/true", payload)
    target = os.path.realpath("/usr/bin/env")
    cap = capture()
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c",
                           f"mount --bind {payload} {target} && exec {target}"], check=True)
    assert proc.returncode == 0
    ctx, found = read_all(cap, lambda: True)
    st = os.stat(payload)
    execs = ctx[(ctx["kind"] == CTX_EXEC) & (ctx["exe_ino"] == st.st_ino)]
    assert execs.size == 1, "the payload's exec was not seen"
    (rec,) = execs
    assert bytes(rec["filename"]).split(b"\0")[0] == target.encode()
    assert rec["exe_dev"] == kernel_dev(st.st_dev)
    assert rec["mntns"] != os.stat("/proc/self/ns/mnt").st_ino
    assert rec["flags"] & TASK_FOREIGN_MNTNS
    assert rec["flags"] & EXE_FOREIGN_MNT and rec["flags"] & EXE_USERNS_MNT
    (mnt,) = [a for a in found if a.kind == "mount" and a.path2 == target.encode()]
    assert mnt.path == str(payload).encode()


def test_sensitive_paths_are_checked_and_a_bad_one_is_refused():
    with pytest.raises(ValueError, match="absolute path"):
        CaptureSettings(sensitive_paths=("relative/",)).validate()
    with pytest.raises(ValueError, match="4 to 127 bytes"):
        CaptureSettings(sensitive_paths=("/" + "a" * 200,)).validate()
    defaults = acts.default_sensitive()
    assert "/etc/shadow" in defaults and "/root/.ssh/" in defaults
    assert all(p.startswith("/") and len(p.encode()) <= 127 for p in defaults)


def test_argv_hash_is_the_documented_one():
    assert acts.argv_hash(b"") == 0xCBF29CE484222325
    long = b"a" * 5000
    assert acts.argv_hash(long) == acts.argv_hash(long[:4096] + b"b")
    assert acts.argv_hash(b"x\0") != acts.argv_hash(b"y\0")


def test_the_default_list_sees_the_shadow_file_read(capture):
    """Default prefixes, a real reader: `head /etc/shadow` is an act, `head /etc/passwd`
    (same first bytes, so past the first filter) is not."""
    cap = capture()
    procs = [subprocess.run(["head", "-c1", path], capture_output=True, check=True)
             for path in ("/etc/shadow", "/etc/passwd")]
    assert all(p.returncode == 0 for p in procs)
    _, found = read_all(cap, lambda: True)
    reads = [a.path for a in found if a.kind == "read" and a.comm.startswith(b"head")]
    assert reads == [b"/etc/shadow"]


def test_a_sensitive_file_named_another_way_is_sent_for_its_end(capture, tmp_path):
    """The same file by another string: through "..", doubled slashes, relative to the
    cwd, and behind a traversal longer than the kernel's buffer; each is sent for its
    name's end (flagged) and resolves to /etc/shadow. A file that only ends alike
    (/etc/passwd through "..") is not sent; one that ends alike but is not sensitive
    is sent and resolves to nothing."""
    cap = capture()
    lookalike = tmp_path / "shadow"
    lookalike.write_text("x")
    long = "/tmp" + "/." * 80 + "/../etc/shadow"
    ways = ["/tmp/../etc/shadow", "//etc//shadow", long, "/tmp/../etc/passwd",
            str(lookalike)]
    pids = [subprocess.run(["head", "-c1", p], capture_output=True, check=True) and None
            for p in ways]
    assert len(pids) == len(ways)
    rel = subprocess.run(["sh", "-c", "cd /etc && head -c1 shadow"], capture_output=True,
                         check=True)
    assert rel.returncode == 0
    _, found = read_all(cap, lambda: True)
    reads = [a for a in found if a.kind == "read" and a.comm.startswith(b"head")]
    assert sorted(a.path for a in reads) == sorted(
        [p.encode() for p in ways if not p.endswith("passwd")] + [b"shadow"])
    assert all(a.flags & acts.BY_TAIL for a in reads)
    sensitive = acts.default_sensitive()
    resolved = [acts.resolve_read(a.path, "/etc" if a.path == b"shadow" else "", sensitive)
                for a in reads]
    assert sorted(resolved, key=str) == sorted([b"/etc/shadow"] * 4 + [None], key=str)
    assert acts.resolve_read(b"shadow", "", sensitive) is None      # no cwd: unknown
