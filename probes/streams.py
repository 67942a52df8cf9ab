"""Reassemble per-thread syscall streams from chunk records, in bulk."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import REC_COMPAT
from .syscalls import COMPAT_BIT


@dataclass
class ThreadStream:
    tid: int
    tgid: int
    comm: str           # comm of the last record (after an exec, the new program)
    ids: np.ndarray     # syscall numbers in order, uint16 (| COMPAT_BIT: 32-bit)
    records: int
    missing_records: int  # gaps in the per-thread sequence numbers (records lost)
    exited: bool


def flatten(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, record index of each id) for the valid ids of `records`, in record order.
    The ids of records from 32-bit threads carry COMPAT_BIT, so that syscalls.names
    reads them in the compat table (i386 numbers on x86_64)."""
    if records.size == 0:
        return np.empty(0, np.uint16), np.empty(0, np.intp)
    width = records.dtype["ids"].shape[0]
    valid = np.arange(width)[None, :] < records["count"][:, None]
    ids = records["ids"][valid]
    owner = np.broadcast_to(np.arange(records.size)[:, None], valid.shape)[valid]
    compat = (records["flags"] & REC_COMPAT) != 0
    if compat.any():  # 32-bit threads: their numbers index the compat table
        ids = ids | np.where(compat[owner], COMPAT_BIT, 0).astype(ids.dtype)
    return ids, owner


def by_thread(records: np.ndarray, exit_flag: int = 0x04) -> dict[int, ThreadStream]:
    """Group records by tid, order by sequence number, and concatenate their ids."""
    if records.size == 0:
        return {}
    order = np.lexsort((records["seq"], records["tid"]))
    recs = records[order]
    ids, owner = flatten(recs)
    tids = recs["tid"]
    starts = np.flatnonzero(np.r_[True, tids[1:] != tids[:-1]])
    ends = np.r_[starts[1:], recs.size]
    id_bounds = np.searchsorted(owner, np.r_[starts, recs.size])
    out: dict[int, ThreadStream] = {}
    for k, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        seqs = recs["seq"][lo:hi].astype(np.int64)
        span = int(seqs[-1] + 1)  # every thread starts at seq 0 when the program loads
        last = recs[hi - 1]
        out[int(tids[lo])] = ThreadStream(
            tid=int(tids[lo]), tgid=int(last["tgid"]),
            comm=last["comm"].decode("utf-8", "surrogateescape"),  # lossless
            ids=ids[id_bounds[k]:id_bounds[k + 1]],
            records=hi - lo, missing_records=span - (hi - lo),
            exited=bool(last["flags"] & exit_flag))
    return out
