"""The house: daemon/ in rooms, each module small, no import cycle among sysdream's modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP = {"probes": "sysdream.probes", "model": "sysdream.model", "daemon": "sysdream.daemon"}
GENERATED = {"probes/tables"}       # syscall tables written by a generator
MAX_LINES = 600
MAX_LOOSE = 10


def _modules() -> dict[str, Path]:
    out = {}
    for top, pkg in TOP.items():
        for p in (REPO / top).rglob("*.py"):
            parts = p.relative_to(REPO / top).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((pkg, *parts))] = p
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every sysdream module `name` imports, at module level or inside a function: a lazy
    import is still a dependency, and a cycle through one is still a cycle."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("sysdream"):
                out.add(t)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_sysdreams_modules():
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        # a package's __init__ is not a dependency of its modules (Python runs it first,
        # but the rooms' __init__ files hold only a docstring)
        graph[name] = {t for t in _imports(name, path, mods)
                       if not (mods[t].name == "__init__.py" and name.startswith(t + "."))}
    assert _cycles(graph) == []


def test_the_walk_finds_a_cycle_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_daemon_has_rooms_and_few_loose_modules():
    loose = sorted(p.name for p in (REPO / "daemon").glob("*.py"))
    assert len(loose) <= MAX_LOOSE, loose
    rooms = [d for d in (REPO / "daemon").iterdir() if d.is_dir() and d.name != "__pycache__"]
    assert {"commands", "service", "detect", "context", "alerting", "metrics", "training",
            "fleet"} <= {d.name for d in rooms}


@pytest.mark.parametrize("room", ["commands", "service", "detect", "context", "alerting",
                                  "metrics", "training", "fleet"])
def test_each_rooms_docstring_names_every_module(room):
    d = REPO / "daemon" / room
    doc = ast.get_docstring(ast.parse((d / "__init__.py").read_text())) or ""
    missing = [p.stem for p in d.glob("*.py")
               if p.stem != "__init__" and f"{p.stem}.py" not in doc]
    assert doc and not missing, f"daemon/{room}/__init__.py does not name {missing}"


def test_no_product_module_is_over_the_limit():
    big = []
    for top in TOP:
        for p in (REPO / top).rglob("*.py"):
            rel = p.relative_to(REPO)
            if any(str(rel).startswith(g) for g in GENERATED):
                continue
            n = len(p.read_text().splitlines())
            if n > MAX_LINES:
                big.append(f"{rel}: {n}")
    assert big == []
