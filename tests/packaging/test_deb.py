"""`make deb` builds a package that installs as the service the README describes, on this
machine: the installed units verify and score at most 3.0 exposure (the capture daemon's
at most 1.9, with the shipped remote-outputs drop-in linked in as docs/runbook.md says),
it recommends no Prometheus server, the installed
/usr/bin/sysdream runs doctor and a short record, an upgrade over a changed conffile keeps
the administrator's file and the state, and a purge leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from speed import scaled

ROOT = Path(__file__).resolve().parents[2]
LEFT = [Path(p) for p in ("/opt/sysdream", "/usr/bin/sysdream", "/etc/sysdream",
                          "/usr/lib/systemd/system/sysdream.service",
                          "/usr/lib/systemd/system/sysdream-agent.service",
                          "/usr/lib/systemd/system/sysdream-server.service",
                          "/usr/lib/systemd/system/sysdream-worker.service",
                          "/var/lib/sysdream", "/var/lib/sysdream-server",
                          "/usr/share/doc/sysdream", "/usr/share/sysdream",
                          "/usr/share/man/man8/sysdream.8.gz",
                          "/usr/share/bash-completion/completions/sysdream",
                          "/usr/share/zsh/vendor-completions/_sysdream")]


def sh(*cmd, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=scaled(timeout), env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("dpkg-deb") is None:
        pytest.fail("the package test needs root and dpkg (the reference host has both)")
    if sh("dpkg-query", "-W", "sysdream").returncode == 0:
        pytest.fail("a sysdream package is installed already; purge it first")
    out = tmp_path_factory.mktemp("debs")
    r = sh("bash", ROOT / "packaging/deb/build.sh", out,
           env={"SYSDREAM_DEB_VERSION": "0.0.1~test"})
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    old = Path(r.stdout.strip().splitlines()[-1])
    return {"0.0.1~test": old, "0.0.2~test": restamped(old, "0.0.2~test")}


def restamped(deb: Path, version: str) -> Path:
    """The same package as a later version, for the upgrade: a second build of this tree
    would differ in the control file's Version only, so only the control member is made
    again (the data member, most of the build's time, is reused as it is)."""
    work = deb.parent / f"restamp-{version}"
    (work / "control").mkdir(parents=True)
    assert sh("ar", "x", "--output", work, deb).returncode == 0
    names = sh("ar", "t", deb).stdout.split()
    assert names[:2] == ["debian-binary", "control.tar.gz"], names
    assert sh("tar", "-xzf", work / "control.tar.gz", "-C", work / "control").returncode == 0
    control = work / "control" / "control"
    text, n = re.subn(r"^Version: .*$", f"Version: {version}", control.read_text(),
                      flags=re.M)
    assert n == 1, text
    control.write_text(text)
    assert sh("tar", "-czf", work / "control.tar.gz", "--owner=0", "--group=0",
              "-C", work / "control", ".").returncode == 0
    new = deb.with_name(deb.name.replace(deb.name.split("_")[1], version))
    r = sh("ar", "rc", new, *(work / n for n in names))
    assert r.returncode == 0, r.stderr
    shutil.rmtree(work)
    assert sh("dpkg-deb", "--field", new, "Version").stdout.strip() == version
    return new


def test_the_deb_installs_runs_upgrades_and_purges_clean(debs, tmp_path):
    old, new = debs["0.0.1~test"], debs["0.0.2~test"]
    info = sh("dpkg-deb", "--info", old).stdout
    assert "Depends: python3.11, python3-bpfcc, systemd" in info
    recommends = re.search(r"^ Recommends: (.*)$", info, re.M).group(1)
    assert "prometheus" not in recommends and "Suggests: prometheus" in info
    assert sh("dpkg-deb", "--contents", old).stdout.count("./etc/sysdream/sysdream.toml") == 1
    try:
        r = sh("dpkg", "-i", old)
        assert r.returncode == 0, r.stderr
        for name in ("sysdream", "sysdream-agent", "sysdream-server", "sysdream-worker"):
            path = Path(f"/usr/lib/systemd/system/{name}.service")
            v = sh("systemd-analyze", "verify", path)
            assert v.returncode == 0 and v.stderr.strip() == "", (name, v.stderr)
            s = sh("systemd-analyze", "security", "--offline=true", path)
            m = re.search(rf"Overall exposure level for {name}.service: ([\d.]+)", s.stdout)
            assert m and float(m.group(1)) <= 3.0, s.stdout[-400:]
        unit = Path("/usr/lib/systemd/system/sysdream.service")
        dropins = Path("/etc/systemd/system/sysdream.service.d")
        try:
            for linked in (False, True):
                if linked:
                    dropins.mkdir(parents=True)
                    (dropins / "remote-outputs.conf").symlink_to(
                        "/usr/share/sysdream/systemd/remote-outputs.conf")
                s = sh("systemd-analyze", "security", "--offline=true", unit)
                m = re.search(r"Overall exposure level for sysdream.service: ([\d.]+)",
                              s.stdout)
                assert m and float(m.group(1)) <= 1.9, s.stdout[-400:]
                assert ("does not define an IP address allow list" in s.stdout) == linked
        finally:
            shutil.rmtree(dropins, ignore_errors=True)
        assert sh("/usr/bin/sysdream", "--version").stdout.startswith("sysdream ")
        doctor = sh("/usr/bin/sysdream", "doctor", timeout=300)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        trace = tmp_path / "t.sdtrace"
        rec = sh("/usr/bin/sysdream", "record", "--seconds", "1", "-o", trace, timeout=300)
        assert rec.returncode == 0 and trace.stat().st_size > 0, rec.stderr
        assert Path("/usr/share/doc/sysdream/README.md").is_file()
        assert "/usr/share/doc/sysdream/README.md" in unit.read_text()

        # the administrator changes the configuration and the daemon has state
        conf = Path("/etc/sysdream/sysdream.toml")
        conf.write_text(conf.read_text().replace("rate_limit_burst = 5",
                                                 "rate_limit_burst = 7"))
        state = Path("/var/lib/sysdream")
        state.mkdir(exist_ok=True)
        (state / "allow.json").write_text("[]")
        r = sh("dpkg", "-i", "--force-confold", new)
        assert r.returncode == 0, r.stderr
        assert "rate_limit_burst = 7" in conf.read_text(), "the admin's conffile was kept"
        assert (state / "allow.json").read_text() == "[]", "the state survived"
        assert "0.0.2~test" in sh("dpkg-query", "-W", "sysdream").stdout
        assert sh("/usr/bin/sysdream", "--version").returncode == 0
    finally:
        purge = sh("dpkg", "--purge", "sysdream")
    assert purge.returncode == 0, purge.stderr
    left = [str(p) for p in LEFT if p.exists() or p.is_symlink()]
    assert not left, f"left after purge: {left}"
