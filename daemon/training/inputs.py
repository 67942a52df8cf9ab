"""Turning command-line inputs into labelled syscall-name sequences for train and eval.

An input is a trace file from `sysdream record`, a dataset file or folder, or a dataset
name. A prefix says how to read a path when its name does not:

  adfa-ld[:ROOT]          ADFA-LD's training split (ROOT defaults to the shared datasets)
  unm:PROGRAM             a UNM program's normal traces (e.g. unm:synthetic-sendmail)
  adfa:PATH  unm:PATH  lidds:PATH  trace:PATH   a file, or every file under a folder
  PATH                    *.sdtrace (or any file with the trace magic), *.sc (LID-DS),
                          *.txt (one ADFA-LD trace)
"""

from __future__ import annotations

import os
from pathlib import Path

from sysdream.probes import datasets
from sysdream.probes.errors import TraceFileError
from sysdream.probes.tracefile import MAGIC, read_trace


def datasets_root() -> Path:
    env = os.environ.get("SYSDREAM_DATASETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), here):
        cand = base.parent / "shared" / "datasets"
        if cand.is_dir():
            return cand
    return Path("/usr/share/sysdream/datasets")


def _read_file(kind: str, path: Path, label: str) -> list[datasets.Sequence]:
    if kind == "adfa":
        return [datasets.read_adfa_file(path, label)]
    if kind == "unm":
        return datasets.read_unm_file(path, label)
    if kind == "lidds":
        return datasets.read_lidds_sc(path, label)
    if kind == "trace":
        return datasets.read_trace_sequences(path, label)
    raise AssertionError(kind)


def _guess(path: Path) -> str:
    with path.open("rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            return "trace"
    if path.suffix == ".sc":
        return "lidds"
    if path.suffix == ".txt":
        return "adfa"
    raise TraceFileError(f"{path}: cannot tell what kind of trace this is; prefix it with "
                         "adfa:, unm:, lidds: or trace:")


def read_input(spec: str, label: str = "normal") -> list[datasets.Sequence]:
    kind, _, rest = spec.partition(":")
    if kind == "adfa-ld":
        return datasets.read_adfa_ld(rest or datasets_root() / "ADFA-LD", "train")
    if kind == "unm" and rest and not Path(rest).exists():
        return datasets.read_unm(datasets_root() / "UNM", rest)["normal"]
    if kind in ("adfa", "unm", "lidds", "trace") and rest:
        path = Path(rest)
    else:
        kind, path = "", Path(spec)
    if not path.exists():
        raise TraceFileError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out: list[datasets.Sequence] = []
    for f in files:
        if f.name.startswith(".") or f.name in ("PROVENANCE.md",):
            continue
        out.extend(_read_file(kind or _guess(f), f, label))
    if not out:
        raise TraceFileError(f"{spec}: no traces found")
    return out


def trace_files(specs: list[str], paths: bool = False) -> list:
    """The sysdream trace files among `specs` (probes.tracefile.Trace each), read whole;
    with `paths`, (path, Trace) pairs."""
    out = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if kind in ("adfa-ld", "adfa", "unm", "lidds"):
            continue
        path = Path(rest if kind == "trace" and rest else spec)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() \
            else [path]
        for f in files:
            if not f.name.startswith(".") and _guess_safe(f) == "trace":
                out.append((f, read_trace(f)) if paths else read_trace(f))
    return out


def _guess_safe(path: Path) -> str:
    try:
        return _guess(path)
    except (TraceFileError, OSError):
        return ""


def label_lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"--labels {path}: {exc.strerror}") from None
    out = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not out:
        raise ValueError(f"--labels {path}: lists no anomalous traces (one path per line)")
    return out
