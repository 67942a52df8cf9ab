"""The foundation: install layout, one-command setup, doctor, CLI error lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from speed import scaled

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SETUP = ROOT / "packaging" / "setup-host.sh"


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(300), **kw)


def as_nobody(cmd: list[str]) -> list[str]:
    return ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", *cmd]


def test_subpackages_map_to_top_level_folders():
    import sysdream.daemon
    import sysdream.model
    import sysdream.probes

    assert Path(sysdream.probes.__file__).parent == ROOT / "probes"
    assert Path(sysdream.model.__file__).parent == ROOT / "model"
    assert Path(sysdream.daemon.__file__).parent == ROOT / "daemon"


def test_plain_install_ships_subpackages_and_bpf_source(tmp_path):
    target = tmp_path / "site"
    r = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(target), str(ROOT)])
    assert r.returncode == 0, r.stderr
    for sub in ("probes", "model", "daemon"):
        assert (target / "sysdream" / sub / "__init__.py").is_file()
    assert (target / "sysdream" / "probes" / "capture.bpf.c").is_file()
    # The installed copy imports on its own, away from the source tree.
    code = ("import sysdream.probes.capture as c, sys; "
            "assert c.bpf_source().startswith(b'//'); print(c.__file__)")
    r = run([sys.executable, "-c", code], cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(target))


def test_console_script_installed():
    r = run([str(VENV_BIN / "sysdream"), "--help"])
    assert r.returncode == 0
    assert "examples:" in r.stdout and "sysdream doctor" in r.stdout


def test_setup_rerun_changes_nothing():
    stamp = ROOT / ".venv" / ".sysdream-setup"
    if not stamp.exists():
        pytest.skip("tests are not running from the .venv made by packaging/setup-host.sh")
    before = stamp.stat().st_mtime_ns
    r = run(["bash", str(SETUP)])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("setup: ok"), r.stdout
    assert stamp.stat().st_mtime_ns == before


def test_setup_refuses_non_root_in_one_line():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    r = run(as_nobody(["bash", str(SETUP)]))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "setup: error: must run as root (capture needs BPF); run: sudo make setup"]


def test_setup_refuses_host_without_apt(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the root check comes first")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    r = run(["/bin/bash", str(SETUP)], env={"PATH": str(bin_dir)})
    assert r.returncode == 3
    assert "apt-get not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_doctor_all_green_as_root(ebpf_ready):
    r = run([str(VENV_BIN / "sysdream"), "doctor"])
    assert r.returncode == 0, r.stdout + r.stderr
    capture_lines = [line for line in r.stdout.splitlines()
                     if line.split()[:1] in (["ok"], ["FAIL"])]
    names = " ".join(capture_lines)
    for name in ("privileges", "bpf syscall", "ring buffer", "tracepoints",
                 "kernel headers", "bcc", "capture program", "torch"):
        assert name in names
    assert not any(line.startswith("FAIL") for line in r.stdout.splitlines())
    assert "capture can work here" in r.stdout


def test_doctor_red_with_fix_as_unprivileged_user():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    r = run(as_nobody([str(VENV_BIN / "sysdream"), "doctor"]))
    assert r.returncode == 3, r.stdout + r.stderr  # Exit.NO_PRIVILEGES
    priv = next(line for line in r.stdout.splitlines() if "privileges" in line)
    assert priv.startswith("FAIL") and "fix: run as root" in priv
    assert "Traceback" not in r.stderr
    # the same, as JSON: the same exit code, the failed check with its fix
    j = run(as_nobody([str(VENV_BIN / "sysdream"), "doctor", "--format", "json"]))
    doc = json.loads(j.stdout)
    assert j.returncode == 3 and doc["exit_code"] == 3 and not doc["capture_can_work"]
    priv = next(c for c in doc["checks"] if c["name"] == "privileges")
    assert not priv["ok"] and priv["required"] and priv["fix"].startswith("run as root")


def test_doctor_as_json_lists_the_checks_of_the_text(ebpf_ready):
    text = run([str(VENV_BIN / "sysdream"), "doctor"])
    j = run([str(VENV_BIN / "sysdream"), "doctor", "--format", "json"])
    doc = json.loads(j.stdout)
    assert j.returncode == 0 and doc["capture_can_work"] and doc["exit_code"] == 0
    names = [c["name"] for c in doc["checks"]]
    assert len(names) == len(text.stdout.splitlines()) - 1     # the summary line
    assert all(n in text.stdout for n in names) and "capture program" in names
    assert all(set(c) == {"name", "ok", "required", "detail", "fix"} for c in doc["checks"])


def test_capture_as_unprivileged_user_is_one_line():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    r = run(as_nobody([str(VENV_BIN / "sysdream"), "top", "--iterations", "1"]))
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and "fix: run as root" in r.stderr


def test_bad_flag_value_is_one_line():
    r = run([str(VENV_BIN / "sysdream"), "top", "--chunk", "100", "--iterations", "1"])
    assert r.returncode == 2
    assert r.stderr.strip() == ("sysdream: error: chunk size must be a power of two "
                                "between 8 and 1024, got 100")


def test_venv_sees_only_bcc_from_system_packages():
    import bcc

    assert Path(bcc.__file__).resolve().is_relative_to("/usr/lib/python3/dist-packages")
    purelib = Path(sysconfig.get_paths()["purelib"])
    pth = (purelib / "system-bcc.pth").read_text().strip()
    assert [p.name for p in Path(pth).iterdir()] == ["bcc"]


def test_run_starts_learning_this_host_and_stops_cleanly(ebpf_ready, tmp_path):
    """`make run`'s command with no model: it attaches, starts recording the baseline,
    and on SIGTERM writes what it recorded and exits 0."""
    import signal
    import time

    proc = subprocess.Popen([str(VENV_BIN / "sysdream"), "run", "--state-dir", str(tmp_path),
                             "--no-metrics", "--no-journald"], stderr=subprocess.PIPE,
                            text=True)
    lines = []
    end = time.monotonic() + 120
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "probes attached" in line:
            break
    text = "".join(lines)
    assert "no model at" in text and "learning this host" in text, text
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=scaled(10))[1]
    assert proc.returncode == 0, rest
    assert "stopped:" in rest and ", 0 lost" in rest
    (baseline,) = tmp_path.glob("baseline-*.sdtrace")
    assert baseline.stat().st_size > 0
