"""The poisoning guard and the share cap: what retraining may learn from recent activity.

The poisoning guard (`guard`, run by the trainer): an attacker who acts slowly could hope
to be learnt as normal. The recordings are replayed under the model in use (its network,
lineage profile and alert bounds; detect/replay.py) with every alert bound at `near` of
itself. A process whose evidence reaches that is dropped from GUARD_SPAN_S before to
GUARD_SPAN_S after that moment, with the other processes of its episode; and every window
above the window bound is dropped (the records of its block), so behaviour kept below the
alert bound on purpose is not learnt either. Then no program
gives more than `share` of what the recordings give (its latest activity goes first). A
program is its executable file (device and inode), not its name: an attacker's hard
links, bind mounts and renamed copies of one file share one cap, and every executable a
user can write (on a writable or tmpfs mount, a memfd, a deleted file) shares one cap
with all the others. The allow entries' windows are the operator's word and pass as they
are.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from sysdream.probes import datasets
from sysdream.probes.layout import EXE_DELETED, EXE_MEMFD, EXE_WRITABLE

from ..config import ConfigError

GUARD_SPAN_S = 600.0    # how long either side of a near-bound moment a process is dropped


MAX_ALLOWED_NAMES = 1024   # syscalls of one allow entry's window taken for training
WRITABLE = "(executables users can write)"     # the one share they all come under


def record_files(trace) -> list:
    """The executable file each of `trace`'s chunk records is counted to, as the share
    cap keys it (see the module's docstring): "file DEV:INO", WRITABLE, or the program
    name where the file is not known; None where the process context does not say."""
    from .profile import _owners, _table

    if not len(trace.records):
        return []
    return _owners(_table(trace.context), trace.records, False, by=_file_key)


def _file_key(img) -> str:
    from ..context.processes import TMPFS_MAGIC
    from .profile import program

    if img.flags & (EXE_WRITABLE | EXE_MEMFD | EXE_DELETED) or img.fs_magic == TMPFS_MAGIC:
        return WRITABLE
    return f"file {img.dev}:{img.ino}" if img.ino else program(img.exe, img.flags)


def share_cap(sizes: list[int], share: float) -> int:
    """The most any one part may give so that none is over `share` of what all give
    after the cap: c with sum(min(n, c)) * share = c (found by bisection). Equal shares are
    always allowed."""
    share = max(share, 1 / len(sizes))
    lo, hi = 0.0, float(max(sizes))
    for _ in range(60):
        c = (lo + hi) / 2
        if sum(min(n, c) for n in sizes) * share >= c:
            lo = c
        else:
            hi = c
    return max(int(lo), 1)


# -- offline: the trainer's side ----------------------------------------------------------
def guard(det, traces: list, near: float, share: float) -> tuple[list, dict]:
    """`traces` (probes.tracefile.Trace, recorded while `det` detected) less what may be an
    attack being taught (see the module's docstring), and a report of what went."""
    from ..detect.replay import alerts_after
    from .profile import Profile, record_programs

    profile = Profile.from_json(det.lineage) if det.lineage is not None else None
    span = int(GUARD_SPAN_S * 1e9)
    keeps, hit = [], set()
    near_calls = above_calls = 0
    for t in traces:
        recs = t.records
        keep = np.ones(len(recs), bool)
        keeps.append(keep)
        if not len(recs):
            continue
        found: list = []
        scores: dict = {}       # the window scores, computed once for both replays
        alerts_after(det, t, profile, int(recs["first_ns"].min()), int(recs["last_ns"].max()),
                     near=near, found=found, cache=scores)
        moments: dict[int, list[int]] = {}
        for d in found:
            for pid in {d.block.tgid, *(d.episode or {}).get("pids", ())}:
                moments.setdefault(int(pid), []).append(int(d.block.ns))
        ns = recs["last_ns"].astype(np.int64)
        for pid, at in moments.items():
            at = np.sort(np.array(at, np.int64))
            rows = np.flatnonzero(recs["tgid"] == pid)
            # the nearest moment to each of the process's records
            j = np.clip(np.searchsorted(at, ns[rows]), 1, len(at)) - 1
            close = np.minimum(np.abs(ns[rows] - at[j]),
                               np.abs(ns[rows] - at[np.minimum(j + 1, len(at) - 1)]))
            gone = rows[close <= span]
            if len(gone):
                hit.add((id(t), pid))
            keep[gone] = False
        near_calls += int(_calls(recs[~keep]))
        # sub-threshold poisoning: a window above the window bound is not learnt, even
        # where its process's evidence never came near the alert bound (one window at
        # the bound weighs 1: evidence 1 over 1 window catches each)
        above: list = []
        alerts_after(det, t, None, int(recs["first_ns"].min()), int(recs["last_ns"].max()),
                     evidence_k=1.0, evidence_m=1, found=above, cache=scores)
        streams: dict[int, tuple] = {}      # tid -> its records in stream order, ends
        for d in above:
            b = d.block
            if b.tid not in streams:
                rows = np.flatnonzero(recs["tid"] == b.tid)
                rows = rows[np.argsort(ns[rows], kind="stable")]    # as the replay cut
                streams[b.tid] = rows, np.cumsum(_per_record(recs[rows]))
            rows, ends = streams[b.tid]
            pos, width = int(b.starts[d.row]), d.model.p
            # the records holding the window's syscalls [pos, pos + width)
            gone = rows[(ends > pos) & (ends - _per_record(recs[rows]) < pos + width)]
            gone = gone[keep[gone]]
            keep[gone] = False
            above_calls += int(_calls(recs[gone]))

    # a bounded share per program, over all the recordings: its latest records go first
    codes: dict[str, int] = {}
    shown: dict[str, str] = {}          # a file's key -> a program name it ran as
    P, NS, C, T, R = [], [], [], [], []
    for i, (t, keep) in enumerate(zip(traces, keeps, strict=True)):
        owners, idx = record_files(t), np.flatnonzero(keep)
        P.append(np.array([codes.setdefault(owners[r] or "(unknown)", len(codes))
                           for r in idx.tolist()], np.int64))
        for key, name in zip(owners, record_programs(t), strict=True):
            if key is not None and name:
                shown.setdefault(key, name)
        NS.append(t.records["last_ns"][idx].astype(np.int64))
        C.append(_per_record(t.records)[idx])
        T.append(np.full(len(idx), i))
        R.append(idx)
    P, NS, C, T, R = (np.concatenate(a) if a else np.zeros(0, np.int64)
                      for a in (P, NS, C, T, R))
    sizes = np.bincount(P, weights=C, minlength=len(codes)).astype(np.int64)
    over: Counter = Counter()
    if len(codes) > 1:
        cap = share_cap(sizes.tolist(), share)
        order = np.lexsort((NS, P))                 # by program, then oldest first
        p, c = P[order], C[order]
        cum = np.cumsum(c)
        first = np.r_[True, p[1:] != p[:-1]]
        base = (cum - c)[first][np.cumsum(first) - 1]   # what came before each program
        drop = order[(cum - base) > cap]
        for i in np.unique(T[drop]).tolist():
            keeps[i][R[drop][T[drop] == i]] = False
        names = list(codes)
        for k, n in enumerate(np.bincount(P[drop], weights=C[drop], minlength=len(codes))):
            if n:
                over[shown.get(names[k], names[k]) if names[k] != WRITABLE
                     else WRITABLE] = int(n)
    total = int(sizes.sum())
    out = [dataclasses.replace(t, records=t.records[keep])
           for t, keep in zip(traces, keeps, strict=True)]
    kept = sum(int(_calls(t.records)) for t in out)
    report = {"syscalls": total + near_calls + above_calls, "kept": kept,
              "near_bound": {"processes": len(hit), "syscalls": near_calls},
              "above_bound": {"syscalls": above_calls},
              "over_share": dict(over.most_common(10)), "near": near, "share": share}
    return out, report


def _per_record(recs: np.ndarray) -> np.ndarray:
    """Syscalls in each chunk record (a chunk holds at most its width of them)."""
    return np.minimum(recs["count"], recs.dtype["ids"].shape[0]).astype(np.int64)


def _calls(recs: np.ndarray) -> int:
    return int(_per_record(recs).sum())


def describe(report: dict) -> str:
    n = report["near_bound"]
    over = ", ".join(f"{p} {c}" for p, c in report["over_share"].items())
    return (f"guard: {report['kept']} of {report['syscalls']} syscalls kept; dropped "
            f"{n['syscalls']} syscalls of {n['processes']} processes whose evidence came to "
            f"{report['near']:g} of their alert bound"
            + (f", {report['above_bound']['syscalls']} syscalls of windows above the window "
               "bound" if report.get("above_bound", {}).get("syscalls") else "")
            + (f"; over a {report['share']:g} share: {over}" if over else ""))


def allowed_sequences(path: Path) -> list[datasets.Sequence]:
    """The window (with its context) of every allow entry in `path` that kept its alert:
    benign by the operator's word. ValueError when the file cannot be used."""
    from ..alerting.allow import AllowList

    try:
        entries = AllowList.load(path).entries
    except ConfigError as exc:
        raise ValueError(f"--allowed {exc}") from None
    out = []
    for e in entries:
        a = e.alert or {}
        names = []
        for key in ("context", "syscalls"):
            v = a.get(key) or []
            v = v.split() if isinstance(v, str) else v
            if not isinstance(v, list) or not all(isinstance(x, str) and 0 < len(x) <= 64
                                                  for x in v):
                raise ValueError(f"--allowed {path}: entry {e.id}'s {key} are not syscall "
                                 "names; remove the entry (`sysdream allow --remove`)")
            names += v
        if names:
            out.append(datasets.Sequence(f"allow:{e.id}",
                                         np.array(names[-MAX_ALLOWED_NAMES:], dtype=object),
                                         "normal", "allow"))
    return out
