"""matplotlib is an optional extra, sysdream[plots] (issue 34): the service and the .deb
go without it. Every module imports where matplotlib cannot be imported, and drawing
there says in one line what to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# run first in a child: matplotlib made unimportable, as on a host without the extra
NO_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None\n"


def child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_MATPLOTLIB + code], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_matplotlib_is_the_plots_extra_not_a_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("matplotlib")]
    extras = project["optional-dependencies"]
    assert [d for d in extras["plots"] if d.startswith("matplotlib")]
    assert set(extras["plots"]) <= set(extras["dev"]), "the tests draw: dev holds plots"


def test_every_module_imports_without_matplotlib():
    modules = sorted(
        f"sysdream.{p.relative_to(ROOT).with_suffix('').as_posix().replace('/', '.')}"
        .removesuffix(".__init__")
        for room in ("probes", "model", "daemon") for p in (ROOT / room).rglob("*.py")
        if "__pycache__" not in p.parts and p.name != "__main__.py")   # that one runs
    r = child(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
              "print('imported', len(sys.modules))")
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-3000:]


def test_drawing_without_matplotlib_names_the_extra():
    r = child("from sysdream.model.evaluation import plot_roc\n"
              "try:\n    plot_roc({'results': []}, '/nonexistent/roc.png')\n"
              "except ValueError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines() == [
        "drawing needs matplotlib, an optional extra: pip install 'sysdream[plots]'"]
