"""Every alert says who, on the real kernel and a real journald: executable, arguments,
user, parent chain and cgroup from the kernel's context records (even for a program gone
before anyone could look at /proc), hostile names escaped, floods grouped by fingerprint
under a ceiling with nothing dropped unaccounted, and no alerts about journald's handling of
sysdream's own alerts.

The tiny synthetic model knows none of a real program's syscalls, and the evidence rule is
set to one window, so every traced program alerts: what is tested is what the alerts say.
The daemon traces one test cgroup only (--cgroup), into which the test starts its programs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

from daemon_helpers import (
    DATA,
    PROBE_DATA,
    config,
    entries_for,
    gcc,
    run_in,
    start_daemon,
    start_in,
)
from harness import wait_for
from speed import scaled

from sysdream.daemon.alerting.kinds import MESSAGE_IDS
from sysdream.daemon.context.cgroups import mount_point


def no_control_characters(text: str) -> bool:
    return not re.search(r"[\x00-\x1f\x7f]", text)


def test_alerts_name_short_lived_fileless_programs_from_the_kernel(ebpf_ready, tmp_path,
                                                                   journal, group,
                                                                   tiny_bundle):
    rel, cg_id, cg_dir = group
    spawner = gcc(tmp_path, PROBE_DATA / "spawner.c")
    mnt = tmp_path / "mnt"          # the deleted copy lives on a tmpfs, as in /dev/shm
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    cfg = config(tmp_path, "[alerts]\nrate_limit_burst = 100\n"
                 "rate_limit_ceiling_per_minute = 1000\n")
    d = start_daemon(tmp_path, cfg, tiny_bundle, cg_id, journal, "--json-lines",
                     str(tmp_path / "alerts.jsonl"))
    try:
        proc = start_in(cg_dir, [str(spawner), "/bin/true", str(mnt)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = proc.communicate(b"g", timeout=scaled(30))
        assert proc.returncode == 0
        memfd_pid, deleted_pid = (int(x) for x in out.split())

        def have_both():
            # a child's windows before its exec alert too (as the spawner's): wait for
            # those of the program it exec'd, which may come later on a loaded machine
            got = {(e["SYSDREAM_PID"], e["SYSDREAM_EXE"].startswith("memfd:"),
                    "sd-deleted" in e["SYSDREAM_EXE"]) for e in entries_for(journal)}
            # the spawner's own windows and its forks' before their exec are one
            # incident (one program, one session, one fingerprint): its first alert
            # may name a fork
            return (str(memfd_pid), True, False) in got and \
                (str(deleted_pid), False, True) in got and \
                any(e["SYSDREAM_EXE"] == str(spawner) for e in entries_for(journal))
        wait_for(have_both, 60, "alerts for the parent and both children's programs\n"
                 + d.stderr[-2000:])
        alerts = entries_for(journal)
        mem = next(e for e in alerts if e["SYSDREAM_PID"] == str(memfd_pid)
                   and e["SYSDREAM_EXE"].startswith("memfd:"))
        dele = next(e for e in alerts if e["SYSDREAM_PID"] == str(deleted_pid)
                    and "sd-deleted" in e["SYSDREAM_EXE"])
        parent = next(e for e in alerts if e["SYSDREAM_EXE"] == str(spawner))
    finally:
        d.kill()
        subprocess.run(["umount", "-l", str(mnt)], check=False)

    # the program, from the kernel, although it was gone long before the alert
    assert mem["SYSDREAM_EXE"] == "memfd:sd\\x1bpayload"
    assert "memfd" in mem["SYSDREAM_EXE_FLAGS"].split()
    assert dele["SYSDREAM_EXE"] == f"{mnt}/sd-deleted (deleted)"
    assert "deleted" in dele["SYSDREAM_EXE_FLAGS"].split()
    assert parent["SYSDREAM_EXE"] == str(spawner)
    for e in (mem, dele):
        assert json.loads(e["SYSDREAM_ARGV"]) == ["sd-child", "--evil\\nMar 1 fake log line",
                                                  "\\x1b[2J\\x07", "\\xff\\xfe"]
        assert e["SYSDREAM_CMDLINE"] == ("sd-child '--evil\\nMar 1 fake log line' "
                                         "'\\x1b[2J\\x07' '\\xff\\xfe'")
        assert e["SYSDREAM_USER"] == "root" and e["SYSDREAM_UID"] == "0"
        assert e["SYSDREAM_EUID"] == "0"
        assert e["SYSDREAM_PPID"] == str(proc.pid)
        lineage = json.loads(e["SYSDREAM_LINEAGE"])
        assert lineage[0]["pid"] == proc.pid and lineage[0]["exe"] == str(spawner)
        assert lineage[1]["pid"] == os.getpid()            # then this test
        own = Path(e["SYSDREAM_EXE"]).name.removesuffix(" (deleted)")
        assert e["SYSDREAM_LINEAGE_TEXT"].endswith(f"spawner > {own}")
        assert e["SYSDREAM_CGROUP"] == rel and e["SYSDREAM_CGROUP_ID"] == str(cg_id)
        assert e["SYSDREAM_CONTEXT_SOURCE"] == "kernel"
        assert e["SYSDREAM_SEVERITY"] == "high"   # fileless executables are high
        assert re.fullmatch(r"[0-9a-f]{16}", e["SYSDREAM_FINGERPRINT"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
                            e["SYSDREAM_TIME_RFC3339"])
        assert e["SYSDREAM_HOSTNAME"] == os.uname().nodename
        # who, on which host and boot, for a SIEM: the parent's command line, the process
        # for good (entity_id), its start on the wall clock; the file gone: no digest, why
        assert e["SYSDREAM_HOST_ID"] == Path("/etc/machine-id").read_text().strip()
        assert e["SYSDREAM_BOOT_ID"] == Path("/proc/sys/kernel/random/boot_id").read_text() \
            .strip().replace("-", "")
        assert e["SYSDREAM_PARENT_CMDLINE"] == f"{spawner} /bin/true {mnt}"
        assert re.fullmatch(r"[0-9a-f]{32}", e["SYSDREAM_ENTITY_ID"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
                            e["SYSDREAM_PROCESS_START"])
        assert e["SYSDREAM_WINDOW_START"] <= e["SYSDREAM_WINDOW_END"] <= \
            e["SYSDREAM_TIME_RFC3339"]
        assert e["SYSDREAM_EXE_SHA256"] == "" and e["SYSDREAM_EXE_SHA256_ERROR"]
        assert float(e["SYSDREAM_ALERT_BOUND"]) > 0 and e["SYSDREAM_SYSDREAM_VERSION"]
        assert e["MESSAGE"].startswith(e["SYSDREAM_WHY"] + ". Next: sysdream explain "
                                       f"--alert-id {e['SYSDREAM_ALERT_ID']}")
    assert mem["SYSDREAM_ENTITY_ID"] != dele["SYSDREAM_ENTITY_ID"]
    # the parent's executable is still on disk after it exited: its digest, read by path
    assert parent["SYSDREAM_EXE_SHA256"] == hashlib.sha256(spawner.read_bytes()).hexdigest()
    # the parent's hostile name, escaped wherever a person reads it
    assert parent["SYSDREAM_COMM"] == "evil\\n\\x1b[31mx"
    for e in alerts:
        assert no_control_characters(e["MESSAGE"]), e["MESSAGE"]
    assert "(evil\\n\\x1b[31mx" not in mem["MESSAGE"]
    assert "memfd:sd\\x1bpayload" in mem["MESSAGE"] and "executable memfd" in mem["MESSAGE"]
    ids = [e["SYSDREAM_ALERT_ID"] for e in alerts]
    assert len(set(ids)) == len(ids)
    # the JSON lines carry the same, and the file is the daemon's alone
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert any(x["exe"] == "memfd:sd\\x1bpayload" and x["argv"][1].startswith("--evil\\n")
               for x in lines if x["kind"] == "anomaly")
    assert (tmp_path / "alerts.jsonl").stat().st_mode & 0o777 == 0o600
    readme_example(next(x for x in lines if x["alert_id"] == mem["SYSDREAM_ALERT_ID"]))

    # explain shows the context, escaped
    raw = tmp_path / "mem.json"
    raw.write_text(json.dumps({k.removeprefix("SYSDREAM_").lower(): v
                               for k, v in mem.items() if k.startswith("SYSDREAM_")}))
    out = subprocess.run([os.sys.executable, "-m", "sysdream.daemon", "explain",
                          "--json", str(raw), "--model", str(tiny_bundle)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "memfd:sd\\x1bpayload" in out.stdout and "lineage:" in out.stdout
    assert no_control_characters(out.stdout.replace("\n", ""))
    # ... and by the id the MESSAGE names, from the JSON lines, as one JSON object
    out = subprocess.run([os.sys.executable, "-m", "sysdream.daemon", "explain",
                          "--alert-id", mem["SYSDREAM_ALERT_ID"], "--json-lines",
                          str(tmp_path / "alerts.jsonl"), "--model", str(tiny_bundle),
                          "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["alert_id"] == mem["SYSDREAM_ALERT_ID"] and doc["why"] == mem["SYSDREAM_WHY"]
    assert [p["observed"] for p in doc["positions"]] == mem["SYSDREAM_SYSCALLS"].split()


README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"(<!-- alert-example: begin[^\n]*-->\n```json\n)(.*?)(\n```\n<!-- "
                     r"alert-example: end -->)", re.S)


def readme_example(alert: dict) -> None:
    """README's example alert is this real one (SYSDREAM_WRITE_EXAMPLE=1 writes it there,
    long lists cut to three entries); otherwise it must hold the same fields in the same
    order, so the README cannot fall behind the alert's shape."""
    shown = {k: v[:3] if isinstance(v, list) else v for k, v in alert.items()}
    text = README.read_text()
    m = EXAMPLE.search(text)
    assert m, "README.md has no alert-example markers"
    if os.environ.get("SYSDREAM_WRITE_EXAMPLE") == "1":
        README.write_text(text[:m.start(2)] + json.dumps(shown, indent=1) + text[m.end(2):])
    else:
        assert list(json.loads(m.group(2))) == list(shown), \
            "README's alert example is stale: rerun with SYSDREAM_WRITE_EXAMPLE=1"


def test_three_hundred_names_from_one_program_do_not_flood(ebpf_ready, tmp_path, journal,
                                                           group, tiny_bundle):
    """One program, 300 processes each with a name of its own: one fingerprint, so at most
    `burst` alerts for it, the rest counted and summarised; a ceiling over all fingerprints;
    metric labels bounded by executable."""
    rel, cg_id, cg_dir = group
    namer = gcc(tmp_path, DATA / "namer.c")
    cfg = config(tmp_path, "[alerts]\nrate_limit_burst = 5\nrate_limit_interval_s = 600\n"
                 "rate_limit_ceiling_per_minute = 12\nsuppressed_summary_s = 2\n"
                 "incident_span_s = 3\n[metrics]\nexe_labels = 3\n")
    d = start_daemon(tmp_path, cfg, tiny_bundle, cg_id, journal)
    try:
        proc = run_in(cg_dir, [str(namer), "300"])

        def events():   # every detection is an event of an incident, closed or open
            closes = journal.entries(MESSAGE_ID=MESSAGE_IDS["incident-closed"])
            return sum(int(c["SYSDREAM_INCIDENT_COUNT"]) for c in closes)
        wait_for(lambda: events() >= 250, 60, "the incidents' events\n" + d.stderr[-2000:])
        m = d.metrics()
    finally:
        d.kill()
    alerts = entries_for(journal)
    kids = [e for e in alerts if e["SYSDREAM_PID"] != str(proc.pid)]
    assert kids and all(re.fullmatch(r"nm\d{3}", e["SYSDREAM_COMM"]) for e in kids)
    names = {e["SYSDREAM_PID"]: e["SYSDREAM_COMM"] for e in kids}
    assert len(set(names.values())) == len(names)                    # a name each ...
    # ... but the fingerprint is the program, its lineage and what was unusual: the
    # children's windows differ only by position (with the start-up syscalls or without)
    fps = [e["SYSDREAM_FINGERPRINT"] for e in kids]
    assert len(set(fps)) <= 3, fps
    assert all(fps.count(f) <= 5 for f in fps)                       # burst per fingerprint
    assert len(alerts) <= 12                                         # the ceiling held
    assert all(e["SYSDREAM_EXE"] == str(namer) for e in kids), \
        [(e["SYSDREAM_PID"], e.get("SYSDREAM_EXE"), e.get("SYSDREAM_PROGRAM")) for e in kids]
    # nothing dropped unaccounted: 300 processes are a few incidents, whose closes count
    # every detection; what the limits held back (if anything) is counted too
    assert len({e["SYSDREAM_INCIDENT_ID"] for e in alerts}) <= 12
    assert sum(v for k, v in m.items() if k.startswith("sysdream_incidents_opened_total")) \
        <= 12 + suppressed_total(m)
    labels = {k for k in m if k.startswith("sysdream_anomalous_windows_total")}
    assert len(labels) <= 4, labels                                  # 3 + "other"
    assert any(str(namer) in k for k in m if k.startswith("sysdream_alerts_total"))


def suppressed_total(m: dict) -> float:
    return sum(v for k, v in m.items() if k.startswith("sysdream_alerts_suppressed_total"))


def test_journald_handling_our_alerts_raises_none(ebpf_ready, tmp_path, journal, group,
                                                  tiny_bundle):
    """journald traced beside an alerting program: its windows of handling sysdream's
    alerts are set aside and counted, and it raises no alert of its own."""
    rel, cg_id, cg_dir = group
    jpid = journal.journald.pid
    (cg_dir / "cgroup.procs").write_text(str(jpid))
    renamer = gcc(tmp_path, PROBE_DATA / "renamer.c")
    cfg = config(tmp_path, "[alerts]\nrate_limit_burst = 50\n"
                 "rate_limit_ceiling_per_minute = 600\nincident_span_s = 1\n")
    d = start_daemon(tmp_path, cfg, tiny_bundle, cg_id, journal)
    try:
        for _ in range(3):
            p = start_in(cg_dir, [str(renamer), "sdloud", "400"], stdin=subprocess.PIPE)
            p.communicate(b"gg", timeout=scaled(30))
            time.sleep(1.5)        # past the incident span: the next run opens its own
        # one incident per run: alerts, though fewer than events
        wait_for(lambda: len(entries_for(journal)) >= 2, 40, "alerts for the program")
        key = 'sysdream_windows_set_aside_total{reason="own_alert_delivery"}'
        wait_for(lambda: d.metric(key) > 0, 20, "journald's windows set aside\n"
                 + d.stderr[-2000:])
        m = d.metrics()
    finally:
        d.kill()
        (Path(f"{mount_point()}/cgroup.procs")).write_text(str(jpid))
    assert not [e for e in entries_for(journal) if e["SYSDREAM_PID"] == str(jpid)]
    # journald was traced and judged: its windows were above the bound, and set aside
    journald = [v for k, v in m.items() if k.startswith("sysdream_anomalous_windows_total")
                and "systemd-journald" in k]
    assert journald and journald[0] >= m[key]


def test_short_lived_steps_are_judged_together(ebpf_ready, tmp_path, journal, group,
                                               tiny_bundle):
    """Twenty children of one parent, six syscalls each: none has the windows the
    evidence rule (3 of 8, the default) needs, so alone none could alert; as an episode
    of their parent they do, and the alert names the parent and the steps."""
    rel, cg_id, cg_dir = group
    prog = gcc(tmp_path, DATA / "shortlived.c")
    cfg = tmp_path / "default-evidence.toml"
    cfg.write_text("[alerts]\nrate_limit_burst = 100\nrate_limit_ceiling_per_minute = 1000\n")
    d = start_daemon(tmp_path, cfg, tiny_bundle, cg_id, journal)
    try:
        proc = run_in(cg_dir, [str(prog), "20"])

        def episodes():
            return [e for e in entries_for(journal)
                    if json.loads(e["SYSDREAM_EPISODE"]).get("parent_pid") == proc.pid]
        found = wait_for(episodes, 30, "an episode alert\n" + d.stderr[-2000:])
    finally:
        d.kill()
    ep = json.loads(found[0]["SYSDREAM_EPISODE"])
    assert len(ep["pids"]) >= 2 and proc.pid not in ep["pids"]
    assert found[0]["SYSDREAM_PPID"] == str(proc.pid)
    assert f"processes of parent {proc.pid}" in found[0]["SYSDREAM_EVIDENCE"]
    assert found[0]["SYSDREAM_EXE"] == str(prog)      # a fork of the parent's program
