"""Readers for public syscall datasets, giving the same thing as a recorded trace:
one sequence of syscall names per process (or thread), with a label.

- ADFA-LD: one file per trace, whitespace-separated i386 syscall numbers.
- UNM (Forrest et al.): lines "pid number"; one sequence per pid per file. The numbers
  are SunOS or old-Linux numbers without a shipped table, so tokens are "unm_<n>".
- LID-DS: .sc text, "timestamp uid pid process_name tid syscall direction args...";
  the enter events ('>') of each thread, names as written.
- sysdream trace files: one sequence per thread, names by the trace's own table.

Non-numeric garbage in a number field is an error naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import syscalls
from .errors import TraceFileError
from .streams import by_thread
from .tracefile import read_trace

ADFA_SPLITS = {"train": "Training_Data_Master", "validation": "Validation_Data_Master",
               "attack": "Attack_Data_Master"}


@dataclass
class Sequence:
    source: str           # file (and pid or tid) it came from
    tokens: np.ndarray    # syscall names, object array
    label: str            # "normal" or "attack"
    group: str = ""       # attack type, program, or split


MAX_FILE = 256 << 20     # bytes of one dataset trace file (ADFA-LD's are kB, UNM's MB)


def _text(path: Path) -> str:
    """A dataset file's text, its size checked before it is read."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TraceFileError(f"{path}: cannot read: {exc.strerror}") from None
    if size > MAX_FILE:
        raise TraceFileError(f"{path}: {size} bytes, over the {MAX_FILE >> 20} MiB a dataset "
                             "trace file may hold; is this a dataset trace file?")
    return path.read_text(errors="replace")


def _numbers(path: Path, text: str) -> np.ndarray:
    try:
        return np.array(text.split(), dtype=np.int64)
    except ValueError:
        for lineno, line in enumerate(text.splitlines(), 1):
            for tok in line.split():
                if not tok.lstrip("-").isdigit():
                    raise TraceFileError(f"{path}:{lineno}: {tok[:40]!r} is not a syscall "
                                         "number; is this a dataset trace file?") from None
        raise


def read_adfa_file(path: str | os.PathLike, label: str = "normal", group: str = "") -> Sequence:
    path = Path(path)
    ids = _numbers(path, _text(path))
    return Sequence(str(path), syscalls.names(ids, "i386"), label, group)


def read_adfa_ld(root: str | os.PathLike, split: str) -> list[Sequence]:
    """One ADFA-LD split: train, validation (normal) or attack (group = attack type)."""
    root = Path(root)
    folder = root / ADFA_SPLITS[split]
    if not folder.is_dir():
        raise TraceFileError(f"{folder}: no such folder; is {root} the ADFA-LD root?")
    if split != "attack":
        return [read_adfa_file(p) for p in sorted(folder.glob("*.txt"))]
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        kind = sub.name.rsplit("_", 1)[0]
        out.extend(read_adfa_file(p, "attack", kind) for p in sorted(sub.glob("*.txt")))
    return out


def read_unm_file(path: str | os.PathLike, label: str = "normal", group: str = "") \
        -> list[Sequence]:
    path = Path(path)
    numbers = _numbers(path, _text(path))
    if numbers.size % 2:
        raise TraceFileError(f"{path}: odd number of fields; UNM lines are 'pid number'")
    pairs = numbers.reshape(-1, 2)
    out = []
    pids, first = np.unique(pairs[:, 0], return_index=True)
    for pid in pids[np.argsort(first)]:  # in order of first appearance
        calls = pairs[pairs[:, 0] == pid, 1]
        tokens = np.array([f"unm_{n}" for n in calls], dtype=object)
        out.append(Sequence(f"{path}:{pid}", tokens, label, group))
    return out


def read_unm(root: str | os.PathLike, program: str) -> dict[str, list[Sequence]]:
    """normal and intrusion sequences of one UNM program folder (e.g. "synthetic-sendmail")."""
    base = Path(root) / program
    if not base.is_dir():
        raise TraceFileError(f"{base}: no such UNM program folder")
    out: dict[str, list[Sequence]] = {"normal": [], "attack": []}
    for kind, label in (("normal", "normal"), ("normal-derived", "normal"),
                        ("intrusion", "attack")):
        folder = base / kind
        if not folder.is_dir():
            continue
        for p in sorted(_files(folder)):
            if p.name == "tot" or p.stat().st_size == 0:
                continue
            out[label].extend(read_unm_file(p, label, program))
    return out


def _files(folder: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(folder):
        for name in names:
            yield Path(dirpath) / name


def read_lidds_sc(path: str | os.PathLike, label: str = "normal", group: str = "") \
        -> list[Sequence]:
    """One LID-DS .sc file: the enter events of each thread, in order."""
    path = Path(path)
    per_tid: dict[int, list[str]] = {}
    with path.open(errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split(maxsplit=7)
            if not fields:
                continue
            if len(fields) < 7 or not fields[4].isdigit():
                raise TraceFileError(f"{path}:{lineno}: not a LID-DS line "
                                     "(timestamp uid pid name tid syscall direction ...)")
            if fields[6] == ">":
                per_tid.setdefault(int(fields[4]), []).append(fields[5])
    return [Sequence(f"{path}:{tid}", np.array(names, dtype=object), label, group)
            for tid, names in per_tid.items()]


def read_trace_sequences(path: str | os.PathLike, label: str = "normal") -> list[Sequence]:
    """A sysdream trace file: one sequence per thread."""
    trace = read_trace(path)
    return [Sequence(f"{path}:{s.tid}", trace.syscall_names(s.ids), label, s.comm)
            for s in by_thread(trace.records).values()]
