"""`sysdream doctor`: can this host capture, alert and detect? One line per check."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

from sysdream.probes import errors, preflight
from sysdream.probes.preflight import Check

from ..alerting.sinks import JOURNAL_SOCKET
from ..exitcodes import Exit, exit_code_for_class


def check_program() -> Check:
    """Compile and attach the real capture program; see a child's syscalls arrive."""
    name = "capture program"
    from sysdream.probes.capture import Capture, CaptureSettings

    try:
        with Capture(CaptureSettings(include_comms=("true",))) as cap:
            subprocess.run(["true"], check=True)
            deadline = time.monotonic() + 2.0
            got = 0
            while time.monotonic() < deadline and not got:
                cap.wait(0.05)
                got = int(cap.read()["count"].sum())
            seen = cap.counters()["seen"]
    except errors.CaptureError as exc:
        return Check(name, False, str(exc), "", type(exc))
    if not got:
        return Check(name, False, f"attached, {seen} syscalls seen, but no record from a child",
                     "report this with `uname -r` and `sysdream doctor` output",
                     errors.ProgramLoadError)
    return Check(name, True, f"compiled, attached, {got} syscalls of a child delivered")


def check_journald() -> Check:
    try:
        ok = stat.S_ISSOCK(os.stat(JOURNAL_SOCKET).st_mode)
    except OSError:
        ok = False
    if ok:
        return Check("journald", True, f"{JOURNAL_SOCKET} present")
    return Check("journald", False, f"{JOURNAL_SOCKET} absent: alerts would go to stderr",
                 "start systemd-journald (alerts fall back to JSON lines on stderr)")


def check_context() -> Check:
    """Process context (who a process is, for alerts) needs the kernel's BTF."""
    from sysdream.probes.capture import kernel_offsets_or_why

    offsets, why = kernel_offsets_or_why()
    if why:
        return Check("process context", False, f"{why}: alerts name processes from /proc "
                     "only (a short-lived one is gone by then); exclude_exes unavailable",
                     "run a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    known = sum(v >= 0 for v in offsets.values())
    return Check("process context", True, f"kernel BTF gives {known} of {len(offsets)} "
                 "structure fields")


def check_torch() -> Check:
    try:
        import torch
    except Exception as exc:
        return Check("torch", False, f"torch does not import: {exc}",
                     "run: make setup (installs torch==2.13.0 into .venv)")
    return Check("torch", True, f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def run(out=sys.stdout, fmt: str = "text") -> int:
    """Print every check (one line each, or one JSON object with `fmt` "json"); exit 0
    only when capture can work."""
    capture_checks = preflight.run_capture_checks()
    if all(c.ok for c in capture_checks):
        capture_checks.append(check_program())
    other = [check_context(), check_journald(), check_torch()]
    failed = [c for c in capture_checks if not c.ok]
    code = int(exit_code_for_class(failed[0].error)) if failed else int(Exit.OK)
    if fmt == "json":
        doc = {"capture_can_work": not failed, "exit_code": code, "uid": os.geteuid(),
               "checks": [{"name": c.name, "ok": c.ok, "required": c in capture_checks,
                           "detail": c.detail, "fix": c.fix or ""}
                          for c in capture_checks + other]}
        out.write(json.dumps(doc, indent=1) + "\n")
        return code
    for check in capture_checks + other:
        mark = "ok  " if check.ok else ("FAIL" if check in capture_checks else "warn")
        line = f"{mark} {check.name:16} {check.detail}"
        if not check.ok and check.fix:
            line += f" -- fix: {check.fix}"
        print(line, file=out)
    if failed:
        print(f"capture cannot work here: {len(failed)} check(s) failed", file=out)
        return code
    print(f"capture can work here (uid {os.geteuid()})", file=out)
    return int(Exit.OK)

