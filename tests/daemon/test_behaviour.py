"""Behaviour profiles on the real kernel: a program's acts learnt, its profile settled by
its own activity, news judged against it, incidents raised through the alert path; a
payload bind-mounted over a real program in a user and mount namespace does not borrow
its profile; the profiles survive a restart and a tampered file is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from sysdream.daemon import config
from sysdream.daemon.alerting.path import AlertPath
from sysdream.daemon.context.processes import ProcessTable, program_label
from sysdream.daemon.detect.news import Watch, pattern, peer_class
from sysdream.daemon.metrics.labels import ExeLabels
from sysdream.daemon.training.behaviour import Profiles, ProgramId
from sysdream.probes import acts
from sysdream.probes.capture import kernel_dev

TOUCH = "/usr/bin/touch"


def observe(cap, table: ProcessTable, watch: Watch, argv: list[str],
            own: bool = True, **popen) -> list:
    """Run `argv` to its end under the capture; the news of its acts (context first).
    The capture sees the whole host: only the news of argv's own process is returned
    (`own`), else all of it."""
    child = subprocess.Popen(argv, **popen)
    assert child.wait(timeout=30) == 0
    news, quiet = [], 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and quiet < 5:
        cap.wait(0.02)
        ctx, recs = cap.read_context(), cap.read_acts()
        cap.read()
        table.ingest(ctx)
        news += watch.take(acts.decode(recs))
        quiet = quiet + 1 if not len(recs) and not len(ctx) else 0
    return [n for n in news if n.pid == child.pid or not own]


def alert_path(tmp_path: Path, processes) -> tuple[AlertPath, Path]:
    out = tmp_path / "alerts.jsonl"
    toml = tmp_path / "sysdream.toml"
    toml.write_text(f'[alerts]\njournald = false\njson_lines = "{out}"\n')
    return AlertPath(config.load(toml), processes, ExeLabels(64), log=lambda m: None), out


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_paths_and_peers_are_normalised():
    assert pattern("/tmp/tmp3k9x_ab/run.12345.lock") == "/tmp/*/run.*.lock"
    assert pattern("/var/log/app/2026-12-07.log") == "/var/log/app/*-*-*.log"
    assert pattern("/etc/cron.d/backup") == "/etc/cron.d/backup"
    assert pattern("/proc/4242/fd/3") == "/proc/*/fd/*"
    assert pattern("/home/u/.cache/a1b2c3d4e5f6.json") == "/home/u/.cache/*.json"
    # dash-separated made names, and scratch folders' made names whatever their letters
    # (multiprocessing's semaphores and folders), while the rest of the name stays
    assert pattern("/dev/shm/sem.mp-k3h_9x2a") == pattern("/dev/shm/sem.mp-abcdefgh") == \
        "/dev/shm/sem.mp-*"
    assert pattern("/tmp/pymp-q1w2e3r4/x") == "/tmp/pymp-*/x"
    assert pattern("/dev/shm/sem.wfwPGG") == "/dev/shm/sem.*"       # glibc's sem_open
    assert pattern("/dev/shm/sem.uobmdw") == "/dev/shm/sem.*"       # ... all lower case
    assert pattern("/dev/shm/sem.backup") == "/dev/shm/sem.*"       # (what it cannot tell)
    assert pattern("/dev/shm/sem.mp-abcdefgh") == "/dev/shm/sem.mp-*"
    assert pattern("/tmp/socket") == "/tmp/socket"
    assert pattern(".git/objects/4f/0a1b2c3d4e5f60718293a4b5c6d7e8f9012345") == \
        pattern(".git/objects/ab/9f8e7d6c5b4a3928170615f4e3d2c1b0a9876543") == ".git/objects/*/*"
    assert pattern("/var/lib/app/app.db-journal") == "/var/lib/app/app.db-journal"
    assert pattern("/home/u/abcdefgh") == "/home/u/abcdefgh"     # outside scratch: a name
    assert [peer_class(a) for a in ("127.0.0.1", "10.1.2.3", "::1", "8.8.8.8")] == \
        ["loopback", "private", "loopback", "public"]


def test_a_settled_program_alerts_on_new_behaviour_and_learns_lows(capture, tmp_path):
    """touch learnt writing one directory, 40 files, settles; in detection a file in
    that directory is nothing, a file in another is a medium incident (one, however many
    files); the same news of a program never settled is low: journald only, and learnt."""
    known, other = tmp_path / "known", tmp_path / "other"
    known.mkdir()
    other.mkdir()
    cap = capture()
    table = ProcessTable()
    profiles = Profiles(min_events=20, max_unseen=0.1)
    watch = Watch(profiles, table)
    assert observe(cap, table, watch, [TOUCH, *(f"{known}/f.{i}" for i in range(40))]) == []
    st = os.stat(TOUCH)
    prog = ProgramId(kernel_dev(st.st_dev), st.st_ino, 0, TOUCH)
    assert profiles.settled(prog), profiles.get(prog)

    watch.learning = False
    assert observe(cap, table, watch, [TOUCH, f"{known}/f.99"]) == []
    news = observe(cap, table, watch, [TOUCH, f"{other}/a", f"{other}/b.tmp"])
    assert [(n.feature, n.settled) for n in news] == \
        [(f"write {pattern(f'{other}/a')}", True), (f"write {pattern(f'{other}/b.tmp')}", True)]
    path, out = alert_path(tmp_path, table)
    path.watch = watch
    path.news(news)
    (alert,) = lines(out)
    assert alert["kind"] == "behaviour" and alert["severity"] == "medium"
    assert alert["incident_state"] == "open" and alert["incident_id"]
    assert alert["program_id"]["ino"] == st.st_ino and not alert["foreign_mount"]
    (inc,) = path.incidents.open.values()
    assert inc.count == 2 and len(inc.evidence) == 2
    # news of a medium incident is never learnt by itself
    assert not profiles.knows(prog, news[0].feature)

    # a program whose profile never settled: low, kept out of the sinks, learnt
    cp = shutil.copy(TOUCH, tmp_path / "mytouch")
    news = [n for n in observe(cap, table, watch, [str(cp), f"{other}/c"])
            if n.kind == "file"]
    assert [n.settled for n in news] == [False]
    path.news(news)
    assert len(lines(out)) == 1         # the low went to journald alone (none here)
    assert path.by_severity["low"] == 1
    mine = ProgramId(news[0].program.dev, news[0].program.ino, 0, news[0].program.label)
    assert profiles.knows(mine, news[0].feature)
    path.tick(time.monotonic() + 10**6)     # the span passes: medium incident closes
    closed = [x for x in lines(out) if x["kind"] == "incident-closed"]
    assert [c["incident_id"] for c in closed] == [alert["incident_id"]]
    assert closed[0]["incident_count"] == 2
    path.close()


def test_a_bind_mount_over_a_program_does_not_borrow_its_profile(capture, tmp_path):
    """`unshare -Urm; mount --bind payload /usr/bin/touch`: the payload runs as
    /usr/bin/touch doing what touch always did, yet it is its own program (its file,
    its mount namespace), unsettled, marked foreign; touch's profile is untouched."""
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is needed for this test")
    d = tmp_path / "d"
    d.mkdir()
    payload = shutil.copy(TOUCH, tmp_path / "payload")
    cap = capture()
    table = ProcessTable()
    profiles = Profiles(min_events=20, max_unseen=0.1)
    watch = Watch(profiles, table)
    observe(cap, table, watch, [TOUCH, *(f"{d}/f.{i}" for i in range(40))])
    st = os.stat(TOUCH)
    real = ProgramId(kernel_dev(st.st_dev), st.st_ino, 0, TOUCH)
    assert profiles.settled(real)
    before = profiles.get(real).events

    watch.learning = False
    news = observe(cap, table, watch, [
        "unshare", "-Urm", "sh", "-c",
        f"mount --bind {payload} {TOUCH} && exec {TOUCH} {d}/f.77"])
    mine = [n for n in news if n.program.label == TOUCH]
    assert mine, [n.feature for n in news]
    pst = os.stat(payload)
    for n in mine:
        assert (n.program.dev, n.program.ino) == (kernel_dev(pst.st_dev), pst.st_ino)
        assert n.program.foreign and n.program.mntns
        assert not n.settled
    assert f"write {pattern(f'{d}/f.1')}" in [n.feature for n in mine]
    assert profiles.get(real).events == before
    path, out = alert_path(tmp_path, table)
    path.watch = watch
    f = __import__("sysdream.daemon.alerting.fields", fromlist=["x"]).behaviour_fields(
        mine[0], {})
    assert f["foreign_mount"] and f["program_id"]["ino"] == pst.st_ino
    path.close()


def test_a_program_in_two_services_has_two_profiles(capture, tmp_path):
    """touch run in sdtest-a.service and in sdtest-b.service (real cgroups named as
    systemd names services) is two programs: each service's profile settles on its own,
    and news of one is not hidden by what the other does; a login session's scope adds
    nothing to the identity."""
    from sysdream.daemon.context.cgroups import mount_point
    from sysdream.daemon.detect.news import service_unit

    assert service_unit("nginx.service") == "nginx.service"
    assert service_unit("session-3.scope") == service_unit("run-u42.service") == ""
    root = mount_point()
    if root is None:
        pytest.fail("no cgroup v2 hierarchy")
    groups = [root / f"sdtest-{x}-{os.getpid()}.service" for x in "ab"]
    d = tmp_path / "d"
    d.mkdir()
    for g in groups:
        g.mkdir()
    try:
        def in_group(g: Path, *argv: str) -> list[str]:
            return ["sh", "-c", f'echo $$ > {g}/cgroup.procs && exec "$@"', "sh", *argv]

        cap = capture()
        table = ProcessTable()
        profiles = Profiles(min_events=20, max_unseen=0.1)
        watch = Watch(profiles, table)
        observe(cap, table, watch, in_group(groups[0], TOUCH, *(f"{d}/f.{i}"
                                                             for i in range(40))))
        units = {p.program.unit for p in profiles.profiles.values()
                 if p.program.label == TOUCH}
        assert units == {groups[0].name}, units
        a = next(p.program for p in profiles.profiles.values()
                 if p.program.unit and p.program.label == TOUCH)
        assert a.key.endswith("@" + groups[0].name) and profiles.settled(a)

        watch.learning = False
        news = observe(cap, table, watch, in_group(groups[1], TOUCH, f"{d}/f.1"))
        mine = [n for n in news if n.program.label == TOUCH]
        assert mine and all(n.program.unit == groups[1].name and not n.settled
                            for n in mine), [(n.program, n.feature) for n in mine]
        assert observe(cap, table, watch, in_group(groups[0], TOUCH, f"{d}/f.2")) == []
    finally:
        for g in groups:
            for pid in (g / "cgroup.procs").read_text().split():
                (root / "cgroup.procs").write_text(pid)
            g.rmdir()


def test_profiles_survive_a_restart_and_a_tampered_file_is_refused(tmp_path):
    p = Profiles(min_events=3, max_unseen=0.5)
    prog = ProgramId(2049, 1234, 0, "/usr/sbin/cron")
    for f in ("child /bin/sh", "child /bin/sh", "write /var/log/cron.log", "child /bin/sh"):
        p.learn(prog, f)
    p.expected_per_hour = 0.25
    path = tmp_path / "profiles.json"
    p.save(path)
    q = Profiles(min_events=3, max_unseen=0.5)
    assert q.load(path) == 1
    assert q.get(prog).counts == p.get(prog).counts and q.settled(prog)
    assert q.expected_per_hour == 0.25
    doc = json.loads(path.read_text())
    doc["body"] = doc["body"].replace("cron.log", "evil.log")
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="checksum"):
        Profiles().load(path)


def test_settling_follows_the_programs_own_activity():
    """A repetitive service settles; a shell doing something new each time never does."""
    p = Profiles(min_events=50, max_unseen=0.05)
    svc, shell = ProgramId(1, 1, 0, "/usr/sbin/svc"), ProgramId(1, 2, 0, "/bin/bash")
    rng = np.random.default_rng(0)
    for i in range(2000):
        p.learn(svc, f"peer private:{[5432, 6379][i % 2]}")
        p.learn(shell, f"child /usr/bin/tool{rng.integers(10**6)}")
    assert p.settled(svc) and not p.settled(shell)


def test_each_kind_of_act_settles_on_its_own():
    """A service settled as a whole by its many writes to one file, whose children are
    still new one time in five: a new child is not evidence, a new file area is, and so
    is a kind it never showed (its first connection); a kind shown twice is not settled."""
    p = Profiles(min_events=50, max_unseen=0.05)
    svc = ProgramId(1, 1, 0, "/usr/sbin/svc")
    for i in range(1000):
        p.learn(svc, "write /var/lib/svc/state")
        if i % 20 == 0:
            p.learn(svc, f"child /usr/bin/tool{i % 100 if i < 500 else i}")
    p.learn(svc, "listen 8080")
    p.learn(svc, "listen 8081")
    assert p.settled(svc)
    assert not p.settled(svc, "child /usr/bin/other")
    assert p.settled(svc, "write /etc/cron.d/x") and p.settled(svc, "unlink /etc/x")
    assert p.settled(svc, "peer public:443")                  # never connected: news
    assert not p.settled(svc, "listen 4444")                  # two listens say little
    assert p.get(svc).unsettled_kinds() == {"exec", "listen"}
    # news with that kind goes quietly in the Watch's terms, and the held-out replay
    # does not count it
    from sysdream.daemon.training.behaviour import HeldOut
    h = HeldOut()
    h.take(p, now_ns=0)
    h.judge(svc, "child /usr/bin/new", lambda: ("s", 1))
    h.judge(svc, "write /etc/cron.d/x", lambda: ("s", 1))
    assert h.incidents == {(svc.key, ("s", 1), "file")}


def test_held_out_news_of_settled_profiles_gives_the_expected_rate():
    """Profiles as they stood three quarters into learning judge the last quarter: news
    of a settled profile counts once per (program, session, kind); news of an unsettled
    one and what the snapshot knew do not."""
    from sysdream.daemon.training.behaviour import HeldOut

    p = Profiles(min_events=3, max_unseen=0.5)
    svc, sh = ProgramId(1, 1, 0, "/usr/sbin/svc"), ProgramId(1, 2, 0, "/bin/sh")
    for _ in range(10):
        p.learn(svc, "peer private:5432")
    p.learn(sh, "child /usr/bin/a")
    h = HeldOut()
    h.take(p, now_ns=0)
    h.judge(svc, "peer private:5432", lambda: ("s", 1))      # known
    h.judge(svc, "write /var/lib/svc/*", lambda: ("s", 1))   # news: one incident
    h.judge(svc, "write /var/tmp/*", lambda: ("s", 1))       # same kind, same session
    h.judge(sh, "child /usr/bin/b", lambda: ("s", 1))        # unsettled: not counted
    assert h.per_hour(now_ns=1800 * 10**9) == 2.0


def test_inline_code_is_a_program_per_launcher(capture, tmp_path):
    """`sh -c` started by this test and `sh -c` started by timeout(1) are two programs:
    the first settles on what it starts and its news is evidence; the second, never
    seen, is news of its own and not hidden in (or spoiling) the first one's profile."""
    d = tmp_path / "d"
    d.mkdir()
    script = "; ".join(f"{TOUCH} {d}/f.{i}" for i in range(40)) + "; true"
    cap = capture()
    table = ProcessTable()
    profiles = Profiles(min_events=20, max_unseen=0.1)
    watch = Watch(profiles, table)
    observe(cap, table, watch, ["sh", "-c", script])
    # the launcher is this test's own program (`python -m pytest`, `.venv/bin/pytest`)
    me = program_label(os.path.realpath("/proc/self/exe"),
                       Path("/proc/self/cmdline").read_bytes().split(b"\0")[:-1])
    mine = [p.program for p in profiles.profiles.values() if " -c by " in p.program.label]
    assert len(mine) == 1 and mine[0].label.endswith(f" -c by {me}"), (mine, me)
    assert profiles.settled(mine[0])

    watch.learning = False
    again = "; ".join(f"{TOUCH} {d}/g.{i}" for i in range(2)) + f"; true > {d}/out"
    news = observe(cap, table, watch, ["sh", "-c", again])
    assert [n.feature for n in news if n.program == mine[0] and n.settled] == \
        [f"write {pattern(str(d))}/out"], [(n.program.label, n.feature) for n in news]
    news = observe(cap, table, watch, ["timeout", "10", "sh", "-c", again], own=False)
    other = {n.program for n in news if " -c by " in n.program.label}
    assert other and all(p.label.endswith(" -c by /usr/bin/timeout") for p in other), other
    assert not any(n.settled for n in news if n.program in other)


def test_downloaded_then_run_and_a_first_read_of_password_hashes_are_dangerous(capture,
                                                                                tmp_path):
    """curl fetches a program from a real HTTP server on loopback, sh runs it: the exec
    is dangerous in a program never seen. The same file copied by cp (no network) is
    not. A first read of /etc/shadow is dangerous in any program until its profile
    holds it; a program that learnt it is quiet."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "payload").write_text("#!/bin/sh\nexit 0\n")     # a script: dash runs it
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cap = capture()
        table = ProcessTable()
        profiles = Profiles(min_events=20, max_unseen=0.1)
        watch = Watch(profiles, table)
        head = ["head", "-c", "1", "/etc/shadow"]
        observe(cap, table, watch, [*head, "/etc/hostname"], own=False)   # learnt
        watch.learning = False
        got = tmp_path / "got"
        news = observe(cap, table, watch, [
            "sh", "-c", f"curl -s -o {got} http://127.0.0.1:{server.server_port}/payload"
            f" && chmod +x {got} && {got}"], own=False)
        ran = [n for n in news if n.program.label.endswith(f" {got}")]
        assert ran and all(n.dangerous.startswith("exec of a file /usr/bin/curl wrote")
                           for n in ran), [(n.program.label, n.dangerous) for n in news]
        copied = tmp_path / "copied"
        news = observe(cap, table, watch, [
            "sh", "-c", f"cp {served}/payload {copied} && chmod +x {copied} && {copied}"],
            own=False)
        assert [n for n in news if n.program.label.endswith(f" {copied}")]
        assert not [n for n in news if n.dangerous], [(n.program.label, n.dangerous)
                                                      for n in news]
        assert [n for n in observe(cap, table, watch, head) if n.dangerous] == []
        tail = ["tail", "-c", "1", "/etc/shadow"]
        shadow = [n for n in observe(cap, table, watch, tail) if n.dangerous]
        assert [n.feature for n in shadow] == ["read /etc/shadow"]
        assert shadow[0].dangerous == "a first read of the password hashes"
        # the same file through a traversal: resolved, the same news
        od = ["od", "-An", "-N1", "/tmp/../etc//shadow"]
        shadow = [n for n in observe(cap, table, watch, od, stdout=subprocess.DEVNULL)
                  if n.dangerous]
        assert [(n.feature, n.dangerous) for n in shadow] == [
            ("read /etc/shadow", "a first read of the password hashes")]
        # relative, by a process gone before it is judged: its cwd is unknown, counted
        before = watch.unresolved_reads
        observe(cap, table, watch, ["sh", "-c", "cd /etc && od -An -N1 shadow"], own=False,
                stdout=subprocess.DEVNULL)
        assert watch.unresolved_reads == before + 1
    finally:
        server.shutdown()


def test_a_first_write_where_the_system_runs_things_later_is_dangerous(capture, tmp_path):
    """Writes under a persistence path (here a cron.d and an authorized_keys of the test's
    own, configured as the daemon's would be): a name the program's profile held is
    quiet; a new one is dangerous in a program never seen, by an absolute path and by a
    relative one from a live process; a package manager's child writing there, a write
    elsewhere and a removal are not."""
    cron = tmp_path / "cron.d"
    cron.mkdir()
    keys = tmp_path / "home" / ".ssh"
    keys.mkdir(parents=True)
    pm = tmp_path / "pm"
    shutil.copy("/usr/bin/dash", pm)
    cap = capture()
    table = ProcessTable()
    watch = Watch(Profiles(min_events=20, max_unseen=0.1), table,
                  persistence=[f"{cron}/", f"{keys}/authorized_keys"],
                  package_managers=[str(pm)])
    observe(cap, table, watch, ["sh", "-c", f"echo a > {cron}/known"], own=False)
    watch.learning = False
    assert not [n for n in observe(cap, table, watch, ["sh", "-c", f"echo a > {cron}/known"],
                                   own=False) if n.dangerous]
    news = observe(cap, table, watch, ["sh", "-c", f"echo a > /{cron}/job; echo k >> "
                                       f"{keys}/authorized_keys; echo b > {tmp_path}/x; "
                                       f"rm {cron}/known"], own=False)
    danger = sorted(n.dangerous for n in news if n.dangerous)
    why = "a first write where the system runs or trusts what it finds"
    assert danger == [f"{why} ({cron}/job)", f"{why} ({keys}/authorized_keys)"], \
        [(n.feature, n.dangerous) for n in news]
    assert {n.feature.split()[0] for n in news if n.dangerous} == {"write"}
    assert not [n for n in observe(cap, table, watch, [str(pm), "-c", f"sh -c 'echo p > "
                                                       f"{cron}/pkg'"], own=False)
                if n.dangerous]
    # relative, from a process still there when it is judged
    child = subprocess.Popen(["sh", "-c", f"cd {cron} && echo r > rel && sleep 3"])
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and child.poll() is None and not got:
        cap.wait(0.02)
        p = cap.read_pass()
        table.ingest(p.context)
        got += [n for n in watch.take(acts.decode(p.acts)) if n.dangerous]
    child.kill()
    child.wait()
    assert [(n.feature, n.dangerous) for n in got] == [("write rel", f"{why} ({cron}/rel)")]


def test_a_shell_served_on_a_network_connection_is_dangerous(capture):
    """sh exec'd with its input and output on an accepted TCP connection (a bind shell) is
    dangerous, from the kernel's exec record; the same sh on a unix socket is not."""
    import socket

    cap = capture()
    table = ProcessTable()
    watch = Watch(Profiles(min_events=20, max_unseen=0.1), table)
    watch.learning = False
    srv = socket.create_server(("127.0.0.1", 0))
    with srv, socket.create_connection(srv.getsockname()) as far:
        conn, _ = srv.accept()
        with conn:
            far.sendall(b"exit\n")
            news = observe(cap, table, watch, ["/bin/sh"], stdin=conn, stdout=conn)
    # the shell's own news (its parent edge); the launcher's child edge is not its danger
    assert [(n.feature.split()[0], n.program.label, n.dangerous) for n in news
            if n.dangerous] == [("parent", "/usr/bin/dash", "a shell or interpreter reading "
                                 "its input from a network connection")], news
    watch = Watch(Profiles(min_events=20, max_unseen=0.1), table)    # all new again
    watch.learning = False
    one, two = socket.socketpair()
    with one, two:
        two.sendall(b"exit\n")
        news = observe(cap, table, watch, ["/bin/sh"], stdin=one, stdout=one)
    assert len(news) == 2 and not [n for n in news if n.dangerous], news
