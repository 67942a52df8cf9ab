"""The wheel `pip wheel .` builds holds every module and file sysdream needs: unpacked
alone on the path (not the source tree), every module imports, and `sysdream --version`
and `sysdream doctor` run from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from speed import scaled

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_is_complete(tmp_path):
    # from a copy without build outputs: a stale build/ would fill in what is missing
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", "build", "*.egg-info", ".git", "__pycache__", ".pytest_cache", "dist"))
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=scaled(300))
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("sysdream-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    for needed in ("sysdream/probes/capture.bpf.c", "sysdream/probes/tables/syscall_names.py",
                   "sysdream/model/dream.py", "sysdream/daemon/commands/cli.py"):
        assert needed in names, needed
    sources = {p.relative_to(ROOT).as_posix() for room in ("probes", "model", "daemon")
               for p in (ROOT / room).rglob("*.py") if "__pycache__" not in p.parts}
    packed = {n.split("/", 1)[1] for n in names if n.startswith("sysdream/")
              and n.endswith(".py")}
    assert sources == packed, f"missing from the wheel: {sources - packed}"
    modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in names
                     if not n.endswith("/__main__.py")     # `python -m`: it runs the CLI
                     if n.startswith("sysdream/") and n.endswith(".py"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import importlib, sys, sysdream.daemon\n"
            f"assert sysdream.daemon.__file__.startswith({str(site)!r}), sysdream.daemon.__file__\n"
            f"for m in {modules!r}: importlib.import_module(m)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=scaled(300))
    assert r.returncode == 0, r.stderr
    for args in (["--version"], ["doctor"]):
        r = subprocess.run([sys.executable, "-m", "sysdream.daemon", *args],
                           capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=scaled(300))
        assert r.returncode == 0, (args, r.stdout, r.stderr)
