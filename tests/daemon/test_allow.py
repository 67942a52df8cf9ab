"""`sysdream allow` against the running daemon, on the real kernel and a real journald: an
alert's pattern allowed by its id stops alerting within a second while the probes stay
attached, is counted, listed, and alerts again once removed; bad input gets one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from daemon_helpers import config, entries_for, start_daemon, start_in
from harness import wait_for
from speed import scaled

LS = os.path.realpath("/bin/ls")


def cli(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "sysdream.daemon",
                           *args], capture_output=True, text=True, timeout=scaled(120))


def run_ls(cg_dir) -> int:
    p = start_in(cg_dir, [LS, "/"], stdout=subprocess.DEVNULL)
    assert p.wait(30) == 0
    return p.pid


def test_allow_by_alert_id_then_remove(ebpf_ready, tmp_path, journal, group, tiny_bundle):
    _, cg_id, cg_dir = group
    state = tmp_path / "state"
    cfg = config(tmp_path, "[alerts]\nrate_limit_burst = 1000\n"
                 "rate_limit_ceiling_per_minute = 10000\n")
    d = start_daemon(tmp_path, cfg, tiny_bundle, cg_id, journal)
    try:
        first = run_ls(cg_dir)
        # ls's own: the fork's windows before its exec are the test's python
        alerts = wait_for(lambda: [e for e in entries_for(journal, SYSDREAM_PID=str(first))
                                   if e.get("SYSDREAM_EXE") == LS], 30, "an alert for ls")
        alert_id, fp = alerts[0]["SYSDREAM_ALERT_ID"], alerts[0]["SYSDREAM_FINGERPRINT"]

        got = cli("allow", "--alert-id", alert_id, "--state-dir", str(state), "--comment",
                  "ls is fine", prefix=journal.prefix)
        assert got.returncode == 0, got.stderr
        assert fp in got.stdout and LS in got.stdout
        wait_for(lambda: "allow list: 1 entries" in d.stderr, 10, "the daemon to take it")
        entry = json.loads((state / "allow.json").read_text())["entries"][0]
        assert (entry["kind"], entry["value"]) == ("fingerprint", fp)
        assert entry["alert"]["syscalls"], "the alert's windows are kept for retraining"
        assert oct((state / "allow.json").stat().st_mode & 0o777) == "0o600"

        second = run_ls(cg_dir)
        try:
            wait_for(lambda: d.metric(f'sysdream_alerts_allowed_total{{exe="{LS}"}}') > 0,
                     40, "the allowed alert to be counted")
        except AssertionError as exc:   # what the second ls raised instead, to say why
            def seen(pid):
                return [(e.get("SYSDREAM_FINGERPRINT"), e.get("SYSDREAM_EXE"),
                         e.get("SYSDREAM_LINEAGE_TEXT"), e.get("SYSDREAM_SYSCALLS", "")[:200])
                        for e in entries_for(journal, SYSDREAM_PID=str(pid))]
            raise AssertionError(f"{exc}; first ls {seen(first)}; second ls "
                                 f"{seen(second)}; daemon: {d.stderr[-2000:]}") from None
        assert not [e for e in entries_for(journal, SYSDREAM_PID=str(second))
                    if e["SYSDREAM_FINGERPRINT"] == fp]

        listed = cli("allow", "--list", "--state-dir", str(state))
        assert listed.returncode == 0
        assert entry["id"] in listed.stdout and "ls is fine" in listed.stdout
        assert alert_id in listed.stdout

        gone = cli("allow", "--remove", entry["id"], "--state-dir", str(state))
        assert gone.returncode == 0, gone.stderr
        wait_for(lambda: "allow list: 0 entries" in d.stderr, 10, "the daemon to drop it")
        third = run_ls(cg_dir)
        wait_for(lambda: entries_for(journal, SYSDREAM_PID=str(third)), 30,
                 "ls to alert again")

        # a damaged edit is refused by the daemon, which keeps the list in use
        (state / "allow.json").write_text("{not json")
        wait_for(lambda: "allow list refused" in d.stderr, 10, "the refusal")
        assert d.proc.poll() is None
        assert d.stderr.count("probes attached") == 1, "never restarted or re-attached"
    finally:
        d.kill()


def test_allow_bad_input_gets_one_line(tmp_path):
    state = tmp_path / "state"
    for args, code, words in [
        (["--exe", "ls"], 2, "absolute path"),
        (["--lineage", "*"], 2, "matches every alert"),
        (["--remove", "nope"], 2, "no such entry"),
        ([], 2, "say what to allow"),
        (["--alert-id", "x", "--json-lines", str(tmp_path / "none.jsonl")], 2,
         "No such file"),
    ]:
        got = cli("allow", *args, "--state-dir", str(state))
        assert got.returncode == code, (args, got.stderr)
        assert len(got.stderr.strip().splitlines()) == 1 and words in got.stderr, got.stderr
    state.mkdir()
    (state / "allow.json").write_text('{"format": 1, "entries": [{"kind": "exe"}]}')
    got = cli("allow", "--list", "--state-dir", str(state))
    assert got.returncode == 12 and "entry 0 is not an allow entry" in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    assert "Traceback" not in got.stderr
