"""systemd/sysdream.service (and the fleet's sysdream-agent.service,
sysdream-server.service and sysdream-worker.service): verified offline, scored by
systemd-analyze security, and the daemon's privileges proven sufficient by running capture
with only the capabilities it grants."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from speed import scaled

UNITS = Path(__file__).resolve().parents[2] / "systemd"
UNIT = UNITS / "sysdream.service"
NAMES = ("sysdream", "sysdream-agent", "sysdream-server", "sysdream-worker")


def installed_copy(tmp_path, name: str = "sysdream") -> Path:
    """The unit as the package installs it, ExecStart pointing at this checkout's sysdream
    (verify checks that the binary exists)."""
    exe = Path(sys.executable).with_name("sysdream")
    assert exe.exists(), "sysdream is not installed in this environment (make setup)"
    text = (UNITS / f"{name}.service").read_text().replace("/usr/bin/sysdream", str(exe))
    out = tmp_path / f"{name}.service"
    out.write_text(text)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_unit_verifies_clean(tmp_path, name):
    unit = installed_copy(tmp_path, name)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=scaled(60))
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


@pytest.mark.parametrize("name", NAMES)
def test_unit_exposure_at_most_3(tmp_path, name):
    unit = installed_copy(tmp_path, name)
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, timeout=scaled(60))
    m = re.search(rf"Overall exposure level for {name}.service: ([\d.]+)", out.stdout)
    assert m, out.stdout[-500:] + out.stderr
    assert float(m.group(1)) <= 3.0


def test_the_agent_unit_is_the_daemons_hardening_with_its_own_start():
    """sysdream-agent.service differs from sysdream.service only in what names it and
    starts it (the secret key as a credential): the same sandbox, line for line."""
    def settings(name):
        return {ln for ln in (UNITS / f"{name}.service").read_text().splitlines()
                if ln and not ln.startswith("#")}
    own = {"Description", "Documentation", "Conflicts", "ExecStart", "LoadCredential"}
    agent, daemon = settings("sysdream-agent"), settings("sysdream")
    assert {ln.split("=")[0] for ln in agent ^ daemon} <= own, agent ^ daemon
    assert "Conflicts=sysdream.service" in agent


@pytest.mark.parametrize("name,cures", [("server", {"12", "15"}), ("worker", {"12", "14"})])
def test_the_server_and_worker_units_hold_no_capability(name, cures):
    text = (UNITS / f"sysdream-{name}.service").read_text()
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M)
    assert f"LoadCredential={name}.curve-secret:" in text and \
        f"%d/{name}.curve-secret" in text and f"sysdream {name} --config" in text
    prevent = re.search(r"^RestartPreventExitStatus=(.*)$", text, re.M).group(1).split()
    assert cures <= set(prevent)


def test_unit_grants_what_capture_needs_and_no_more():
    text = UNIT.read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    ambient = re.search(r"^AmbientCapabilities=(.*)$", text, re.M).group(1).split()
    assert sorted(caps) == sorted(ambient) == ["CAP_BPF", "CAP_PERFMON"]
    prevent = re.search(r"^RestartPreventExitStatus=(.*)$", text, re.M).group(1).split()
    from sysdream.daemon.exitcodes import Exit
    cured_by_restart = {Exit.OK, Exit.FAILURE, Exit.METRICS_PORT, Exit.INTERRUPTED}
    not_from_run = {Exit.ANOMALOUS, Exit.NOT_RUNNING, Exit.UNTRUSTED,   # other verbs' codes
                    Exit.MISSING_PACKAGE}
    assert sorted(map(int, prevent)) == sorted(int(e) for e in Exit
                                               if e not in cured_by_restart | not_from_run), \
        prevent
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=",
                   "StateDirectory=sysdream", "RuntimeDirectory=sysdream",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "LogRateLimitIntervalSec=0"):
        assert needed in text, needed


def test_capture_works_as_an_unprivileged_user_with_only_those_capabilities(ebpf_ready):
    """What the unit grants (a dynamic user with CAP_BPF and CAP_PERFMON, no root) is
    enough: the capture program compiles, attaches and delivers a child's syscalls."""
    if shutil.which("setpriv") is None:
        raise AssertionError("setpriv (util-linux) is missing")
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon",
         sys.executable, "-m", "sysdream.daemon", "doctor"],
        capture_output=True, text=True, timeout=scaled(180))
    assert "running with CAP_BPF and CAP_PERFMON" in out.stdout, out.stdout + out.stderr
    assert re.search(r"ok\s+capture program\s+compiled, attached", out.stdout), out.stdout
    assert "uid 65534" in out.stdout


def test_inference_runs_where_writable_executable_memory_is_refused(tiny_bundle):
    """MemoryDenyWriteExecute=yes: torch's oneDNN cannot JIT there; the daemon notices and
    scores without it. PR_SET_MDWE applies the same refusal to a process here."""
    code = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
import numpy as np
from sysdream.daemon.service.runtime import adapt_torch, wx_memory_allowed
assert not wx_memory_allowed()
assert adapt_torch()
from sysdream.model.detector import Detector
d = Detector.load({str(tiny_bundle)!r})
r = d.score_sequence(np.array(["openat", "read", "close"] * 20, dtype=object))
print("scored", len(r.scores.score))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=scaled(120))
    assert out.returncode == 0 and "scored" in out.stdout, out.stderr[-2000:]


def test_stop_and_reload_signals_set_flags_and_an_ignored_sigint_stays_ignored():
    """The unit stops with SIGTERM and reloads with SIGHUP (ExecReload); the long-running
    commands share one way of taking them (runtime.on_signals). Real signals, sent to a
    child that installs it."""
    code = """
import signal
from sysdream.daemon.service.runtime import on_signals, restore_signals
got = []
old = on_signals(lambda: got.append("stop"), lambda: got.append("reload"))
# raise_signal: to this thread, so each handler has run when it returns (os.kill to the
# process may be taken by another thread, and the handler run after the print below)
signal.raise_signal(signal.SIGHUP)
signal.raise_signal(signal.SIGTERM)
signal.raise_signal(signal.SIGINT)
print(",".join(got), signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
restore_signals(old)
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=scaled(60))
    assert plain.stdout.split() == ["reload,stop,stop", "False", "True"], plain.stderr
    # a background job of a shell starts with SIGINT ignored: Ctrl-C is not for it
    background = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert background.stdout.split() == ["reload,stop", "True", "True"], background.stderr
