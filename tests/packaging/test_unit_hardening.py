"""The daemon's units as the attacker model asks (issue 33, #6, #12, #13, #17) and the
switch that lets alerts out to other hosts (issue 34): scored by systemd-analyze security
at or under 1.9 with and without the shipped drop-in, the drop-in seen by systemd to lift
the deny list, secrets declared as credentials, and capture proven to work inside what
ProtectKernelTunables=yes leaves (the real kernel, the unit's unprivileged user)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
DROPIN = ROOT / "packaging" / "systemd" / "remote-outputs.conf"
RUNBOOK = ROOT / "docs" / "runbook.md"
DAEMONS = ("sysdream", "sysdream-agent")
CREDENTIALS = ("sysdream.signing-key", "sysdream.webhook-headers")


def installed(tmp_path: Path, name: str, dropin: bool = False) -> Path:
    """The unit as installed, ExecStart at this checkout's sysdream (verify wants it to
    exist), with the shipped drop-in in NAME.service.d/ when asked."""
    exe = Path(sys.executable).with_name("sysdream")
    assert exe.exists(), "sysdream is not installed in this environment (make setup)"
    unit = tmp_path / f"{name}.service"
    unit.write_text((UNITS / f"{name}.service").read_text()
                    .replace("/usr/bin/sysdream", str(exe)))
    if dropin:
        d = tmp_path / f"{name}.service.d"
        d.mkdir()
        (d / DROPIN.name).symlink_to(DROPIN)      # as the runbook says: a link, not a copy
    return unit


def security(unit: Path) -> tuple[float, str]:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(rf"Overall exposure level for {unit.stem}.service: ([\d.]+)", out.stdout)
    assert m, out.stdout[-500:] + out.stderr
    return float(m.group(1)), out.stdout


@pytest.mark.parametrize("dropin", [False, True], ids=["shipped", "remote-outputs"])
@pytest.mark.parametrize("name", DAEMONS)
def test_exposure_at_most_1_9_and_the_unit_verifies(tmp_path, name, dropin):
    unit = installed(tmp_path, name, dropin)
    score, _ = security(unit)
    assert score <= 1.9, score
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert v.returncode == 0 and v.stderr.strip() == "", v.stderr


@pytest.mark.parametrize("name", DAEMONS)
def test_the_remote_outputs_dropin_lifts_the_deny_list_and_nothing_else(tmp_path, name):
    """systemd itself reads the linked drop-in: the IP allow list goes, every other
    setting scores as before."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, shipped = security(installed(tmp_path / "a", name))
    _, opened = security(installed(tmp_path / "b", name, dropin=True))
    assert "IP address allow list with only localhost entries" in shipped
    assert "does not define an IP address allow list" in opened
    def items(text):      # each check's mark and name, the IP allow list's aside
        return {m.group(0) for m in re.finditer(r"^[✓✗]\s+\S+", text, re.M)
                if "IPAddressDeny" not in m.group(0)}
    assert len(items(shipped)) > 40 and items(shipped) == items(opened)
    text = DROPIN.read_text()
    settings = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert settings == ["[Service]", "IPAddressDeny="]
    assert "/usr/share/sysdream/systemd/remote-outputs.conf" in \
        (UNITS / "sysdream.service").read_text()
    assert "ln -s /usr/share/sysdream/systemd/remote-outputs.conf" in RUNBOOK.read_text()


@pytest.mark.parametrize("name", DAEMONS)
def test_the_unit_bounds_tasks_and_files_and_protects_kernel_tunables(name):
    text = (UNITS / f"{name}.service").read_text()
    for line in ("ProtectKernelTunables=yes", "PrivateMounts=yes", "IPAddressDeny=any",
                 "IPAddressAllow=localhost", "MemoryMax=1G"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    tasks = int(re.search(r"^TasksMax=(\d+)$", text, re.M).group(1))
    files = int(re.search(r"^LimitNOFILE=(\d+)$", text, re.M).group(1))
    # room for the largest [learning] threads plus [detection] torch_threads (256 each)
    from sysdream.daemon.config import SCHEMA
    most = SCHEMA["learning"]["threads"].check
    assert not most(257) and most(256) and tasks >= 2 * 256 + 64
    assert 1024 <= files <= 65536


@pytest.mark.parametrize("name", DAEMONS)
def test_secrets_are_credentials_named_in_the_unit_and_the_runbook(name):
    """The signing key and the webhook's headers reach the DynamicUser as credentials
    searched in /etc/credstore (a missing one is no error), never as a file it must be
    able to read."""
    text = (UNITS / f"{name}.service").read_text()
    runbook = RUNBOOK.read_text()
    for cred in CREDENTIALS:
        assert re.search(rf"^LoadCredential={re.escape(cred)}$", text, re.M), cred
        assert f"/etc/credstore/{cred}" in runbook, cred


def test_capture_works_inside_what_protect_kernel_tunables_leaves(ebpf_ready, tmp_path):
    """What ProtectKernelTunables=yes does to the daemon's view, made by hand in a mount
    namespace (/sys and /proc/sys read-only down every mount, /proc/kallsyms
    inaccessible), then the unit's user with only CAP_BPF and CAP_PERFMON runs doctor:
    the capture program compiles, attaches and delivers."""
    for tool in ("unshare", "setpriv", "findmnt"):
        assert shutil.which(tool), f"{tool} (util-linux) is missing"
    hidden = tmp_path / "inaccessible"
    hidden.touch()
    hidden.chmod(0)
    tmp_path.chmod(0o755)
    check = ("import os; ro = all(os.statvfs(p).f_flag & os.ST_RDONLY for p in "
             "('/sys', '/proc/sys', '/sys/kernel/tracing') if os.path.isdir(p)); "
             "print('read-only', ro); open('/proc/kallsyms')")
    script = f"""
set -e
mount --rbind /sys /sys
mount --rbind /proc/sys /proc/sys
for m in $(findmnt -rn -o TARGET -R /sys; findmnt -rn -o TARGET -R /proc/sys); do
    mount -o remount,bind,ro "$m"
done
mount --bind {hidden} /proc/kallsyms
drop() {{ setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+bpf,+perfmon \
    --ambient-caps=+bpf,+perfmon "$@"; }}
drop {sys.executable} -c "{check}" 2>&1 || true
drop {sys.executable} -m sysdream.daemon doctor
"""
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                          script], capture_output=True, text=True, timeout=300)
    assert "read-only True" in out.stdout, out.stdout + out.stderr
    assert "PermissionError" in out.stdout, "/proc/kallsyms was readable"
    assert re.search(r"ok\s+capture program\s+compiled, attached", out.stdout), \
        out.stdout + out.stderr
    assert "uid 65534" in out.stdout
