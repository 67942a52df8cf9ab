"""matplotlib is the optional `plots` extra: without it, `explain --plot` and `eval`
(whose --plot is on by default) stop before any work with one line naming the fix and exit
19; `explain` without --plot needs no matplotlib at all.

matplotlib is installed in this venv, so its absence is a named fake: a folder first on
PYTHONPATH holds a `matplotlib` package whose import raises ImportError, which is what
Python does when it is not installed (uninstalling it would break the other tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from speed import scaled

from sysdream.daemon.exitcodes import Exit

FIX = "pip install 'sysdream[plots]' (or apt install python3-matplotlib)"


def without_matplotlib(tmp_path, *args) -> subprocess.CompletedProcess:
    fake = tmp_path / "no-matplotlib" / "matplotlib"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError('fake: matplotlib is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    return subprocess.run([sys.executable, "-m", "sysdream.daemon", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=scaled(120))


def alert_file(tmp_path):
    path = tmp_path / "alert.json"
    path.write_text(json.dumps({"kind": "anomaly", "pid": 42, "comm": "w",
                                "syscalls": ["open", "read", "mmap", "close"] * 4}) + "\n")
    return path


def test_explain_plot_without_matplotlib_is_one_line_naming_the_fix(tmp_path, tiny_bundle):
    png = tmp_path / "heat.png"
    r = without_matplotlib(tmp_path, "explain", "--json", alert_file(tmp_path), "--model",
                           tiny_bundle, "--plot", png)
    assert r.returncode == Exit.MISSING_PACKAGE == 19, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("sysdream: error: --plot needs matplotlib") and FIX in lines[0]
    assert r.stdout == "" and not png.exists(), "stopped before any work"


def test_explain_without_plot_needs_no_matplotlib(tmp_path, tiny_bundle):
    r = without_matplotlib(tmp_path, "explain", "--json", alert_file(tmp_path), "--model",
                           tiny_bundle, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["positions"][0]["observed"] == "open"


def test_eval_says_it_before_the_work_and_names_the_way_without_a_plot(tmp_path):
    start = time.monotonic()
    r = without_matplotlib(tmp_path, "eval", "--dataset", "files", "--json",
                           tmp_path / "r.json")
    assert r.returncode == 19 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert FIX in r.stderr and "--plot '' for no ROC plot" in r.stderr
    assert not (tmp_path / "r.json").exists()
    assert time.monotonic() - start < scaled(60)
