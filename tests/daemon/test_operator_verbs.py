"""The operator's verbs without a daemon: `config check` over a file and its conf.d
drop-ins (exit 0, or 12 naming FILE:LINE), `model show`, and the identity an alert carries
(exe_sha256 cached by device, inode and mtime; entity_id)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

from sysdream.daemon import config
from sysdream.daemon.context import identity, procfs


def sysdream(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sysdream.daemon", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_drop_ins_merge_in_name_order_and_an_error_names_its_file_and_line(tmp_path):
    main = tmp_path / "sysdream.toml"
    main.write_text("[service]\nstatus_interval_s = 5.0\nlog_level = \"info\"\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "20-b.toml").write_text("[service]\nlog_level = \"error\"\n")
    (tmp_path / "conf.d" / "10-a.toml").write_text("[service]\nlog_level = \"debug\"\n"
                                                   "status_interval_s = 2.0\n")
    (tmp_path / "conf.d" / "30-not-toml.conf").write_text("ignored = [")
    cfg = config.load(main)
    assert cfg.service.log_level == "error" and cfg.service.status_interval_s == 2.0
    ok = sysdream("config", "check", "--config", main, "--format", "json")
    assert ok.returncode == 0, ok.stderr
    assert [os.path.basename(f) for f in json.loads(ok.stdout)["files"]] == [
        "sysdream.toml", "10-a.toml", "20-b.toml"]
    # a key that depends on another is judged on the merged result, named where it was set
    (tmp_path / "conf.d" / "40-hook.toml").write_text("\n[alerts.webhook]\nenabled = true\n")
    bad = sysdream("config", "check", "--config", main)
    assert bad.returncode == 12 and "Traceback" not in bad.stderr
    assert f"{tmp_path}/conf.d/40-hook.toml:3: [alerts.webhook] is enabled but has no url" \
        in bad.stderr
    (tmp_path / "conf.d" / "50-url.toml").write_text('[alerts.webhook]\nurl = "http://h/"\n')
    assert sysdream("config", "check", "--config", main).returncode == 0
    (tmp_path / "conf.d" / "60-broken.toml").write_text("[service]\n\nlog_level = loud\n")
    bad = sysdream("config", "check", "--config", main)
    assert bad.returncode == 12 and f"{tmp_path}/conf.d/60-broken.toml:3: not valid TOML" \
        in bad.stderr, bad.stderr


def test_model_show_names_bounds_data_and_signature(tiny_bundle, tmp_path, capsys):
    from sysdream.daemon.commands.cli import main

    assert main(["model", "show", str(tiny_bundle), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert doc["model_id"] == manifest["model_id"] and doc["window_bound"] > 0
    assert doc["trained_at"] and doc["training_data"] and doc["signature"] is None
    assert main(["model", "show", str(tiny_bundle)]) == 0
    assert f"model {doc['model_id']}" in capsys.readouterr().out
    assert main(["model", "show", str(tmp_path / "nothing")]) == 11
    assert "sysdream: error:" in capsys.readouterr().err


def test_exe_digest_is_cached_by_inode_and_mtime_and_says_why_when_unreadable(tmp_path):
    me = os.getpid()
    digests = identity.ExeDigests()
    real = hashlib.sha256(open(os.readlink(f"/proc/{me}/exe"), "rb").read()).hexdigest()
    assert digests.digest(me, "", procfs.start_of(me)) == (real, "")
    assert digests.digest(me, "", procfs.start_of(me)) == (real, "")
    assert (digests.hashed, digests.hits) == (1, 1)
    # another start time is another process that had this pid: the path is read instead
    exe = tmp_path / "tool"
    shutil.copy(os.readlink(f"/proc/{me}/exe"), exe)
    assert digests.digest(me, str(exe), procfs.start_of(me) + 10**10)[0] == real
    exe.write_bytes(b"#!/bin/sh\n")          # replaced: a new mtime, a new digest
    os.utime(exe, ns=(1, 1))
    assert digests.digest(0, str(exe)) == (hashlib.sha256(b"#!/bin/sh\n").hexdigest(), "")
    digest, why = digests.digest(0, str(tmp_path / "gone"))
    assert digest == "" and "No such file" in why
    assert digests.digest(0, "memfd:x")[0] == "" and digests.digest(0, "memfd:x")[1]
    # one process for good: the same key, the same id; another host or boot, another id
    a = identity.entity_id(42, 7, "h1", "b1")
    assert a == identity.entity_id(42, 7, "h1", "b1") and len(a) == 32
    assert len({a, identity.entity_id(42, 7, "h2", "b1"), identity.entity_id(42, 7, "h1", "b2"),
                identity.entity_id(42, 8, "h1", "b1")}) == 4


def test_allow_speaks_json_for_scripts(tmp_path, capsys):
    from sysdream.daemon.commands.cli import main

    state = str(tmp_path)
    assert main(["allow", "--state-dir", state, "--exe", "/usr/bin/backup", "--comment",
                 "nightly", "--format", "json"]) == 0
    added = json.loads(capsys.readouterr().out)["added"]
    assert added["kind"] == "exe" and added["value"] == "/usr/bin/backup"
    assert main(["allow", "--state-dir", state, "--list", "--format", "json"]) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)["entries"]] == [added["id"]]


def test_log_lines_go_to_journald_only_when_stderr_is_its_stream(tmp_path):
    """systemd's JOURNAL_STREAM names the stream it connected; a redirected stderr (a
    terminal, a test, `2>file`) gets plain lines with the level chosen."""
    code = """
import os, sys
from systemd.journal import JournalHandler
from sysdream.daemon.service import logs
st = os.fstat(2)
print(logs.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}),
      logs.under_journald({"JOURNAL_STREAM": "1:2"}), logs.under_journald({}))
os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
print(isinstance(logs.setup("info"), JournalHandler))
del os.environ["JOURNAL_STREAM"]
logs.setup("warning")
logs.log("not shown at warning")
logs.warn("shown")
"""
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=f,
                             text=True, timeout=60)
    assert out.returncode == 0, err.read_text()
    assert out.stdout.split() == ["True", "False", "False", "True"]
    assert err.read_text() == "sysdream: shown\n"
