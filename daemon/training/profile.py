"""Lineage novelty: what the learnt host never did, as evidence beside the sequence model.
"""

from __future__ import annotations

import base64
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from sysdream.probes.layout import CTX_EXEC, EXE_DELETED, EXE_MEMFD, REC_EXEC
from sysdream.probes.streams import flatten

from ..context.processes import ProcessTable

FORMAT = 1


HELDOUT_FRACTION = 0.25       # the baseline's last quarter estimates the novelty rates


MAX_WEIGHT = 8.0


GRAM = 6                      # syscalls in a sequence of new_sequence (stide's length)


MAX_GRAMS = 1 << 22           # sequence hashes a bundle's profile may hold, all programs


_GRAM_MUL = np.uint64(0x100000001B3)   # FNV's 64-bit prime: h = h * MUL + call, mod 2^64


MEMFD = "memfd:*"             # memfd names are the caller's choice: one program for all


def program(exe: str, flags: int = 0) -> str:
    """The name a program is known by in the profile."""
    if flags & EXE_MEMFD or exe.startswith("memfd:"):
        return MEMFD
    return exe


def unseen(counts: dict, extra: int = 0) -> float:
    """Good-Turing's unseen mass, Laplace-smoothed: (seen once + 1) / (total + extra + 2)."""
    once = sum(1 for n in counts.values() if n == 1)
    return (once + 1) / (sum(counts.values()) + extra + 2)


def weight(p: float, alpha: float) -> float:
    """How many windows above the bound an event of probability p is worth."""
    if not 0 < alpha < 1 or p >= 1:
        return 0.0
    return min(MAX_WEIGHT, max(0.0, math.log(max(p, 1e-300)) / math.log(alpha)))


def gram_hashes(win: np.ndarray) -> np.ndarray:
    """The hash of each sequence along the last axis of `win` (syscall numbers, [..., GRAM],
    a sliding-window view as well as an array), as uint64 of the leading shape."""
    h = np.zeros(win.shape[:-1], np.uint64)
    with np.errstate(over="ignore"):
        for j in range(win.shape[-1]):
            h = h * _GRAM_MUL + win[..., j].astype(np.uint64)
    return h


def stream_grams(ids: np.ndarray) -> np.ndarray:
    """The hash of the sequence ending at each position of one thread's syscall numbers
    (positions before GRAM - 1 end none: 0, which no real sequence hashes to in practice,
    and they are never looked up)."""
    out = np.zeros(len(ids), np.uint64)
    if len(ids) >= GRAM:
        win = np.lib.stride_tricks.sliding_window_view(np.asarray(ids, np.int64), GRAM)
        out[GRAM - 1:] = gram_hashes(win)
    return out


class GramTable:
    """Exact membership of (program, sequence hash) pairs, vectorised: an open-addressing
    table (linear probing, at most half full), so a lookup is one or two reads where a
    binary search over a program's sorted hashes is twenty (the daemon looks up every
    syscall it judges)."""

    def __init__(self, grams: dict[str, np.ndarray]):
        self.code = {prog: i + 1 for i, prog in enumerate(sorted(grams))}
        keys = np.concatenate([self._keys(np.asarray(h, np.uint64), self.code[prog])
                               for prog, h in grams.items()] or [np.zeros(0, np.uint64)])
        keys = np.unique(keys)
        size = 1 << max(4, int(2 * max(len(keys), 1) - 1).bit_length())
        self.mask = np.uint64(size - 1)
        self.table = np.zeros(size, np.uint64)          # 0: an empty slot
        slot = keys & self.mask
        left = np.arange(len(keys))
        while len(left):            # place every key at its first free slot from its own
            s = slot[left]
            free = self.table[s] == 0
            # of the keys wanting one free slot, the first takes it
            s_free, first = np.unique(s[free], return_index=True)
            took = left[free][first]
            self.table[s_free] = keys[took]
            placed = np.zeros(len(keys), bool)
            placed[took] = True
            left = left[~placed[left]]
            slot[left] = (slot[left] + np.uint64(1)) & self.mask

    @staticmethod
    def _keys(h: np.ndarray, code: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            k = (h * _GRAM_MUL + np.uint64(code)) * np.uint64(0x9E3779B97F4A7C15)
        k[k == 0] = 1
        return k

    def contains(self, h: np.ndarray, prog: str) -> np.ndarray:
        """Whether `prog` made each sequence of hashes `h` (any shape); all False for a
        program it does not know."""
        code = self.code.get(prog)
        if code is None:
            return np.zeros(h.shape, bool)
        keys = self._keys(h.ravel(), code)
        out = np.zeros(len(keys), bool)
        slot = keys & self.mask
        left = np.arange(len(keys))
        while len(left):
            got = self.table[slot[left]]
            hit = got == keys[left]
            out[left[hit]] = True
            left = left[~hit & (got != 0)]          # an empty slot: not there
            slot[left] = (slot[left] + np.uint64(1)) & self.mask
        return out.reshape(h.shape)


@dataclass
class Event:
    kind: str
    what: str
    p: float

    def to_json(self, alpha: float) -> dict:
        return {"kind": self.kind, "what": self.what, "p": float(f"{self.p:.3g}"),
                "weight": round(weight(self.p, alpha), 2)}


@dataclass
class Profile:
    programs: dict = field(default_factory=dict)     # program -> processes that ran it
    edges: dict = field(default_factory=dict)        # parent -> {child: execs}
    syscalls: dict = field(default_factory=dict)     # program -> {syscall name: calls}
    execs: int = 0
    fileless: int = 0
    seconds: float = 0.0
    heldout: dict | None = None                      # novelty seen in the held-out part
    grams: dict = field(default_factory=dict)        # program -> sorted uint64 hashes
    gram_runs: dict = field(default_factory=dict)    # program -> p of a run of new ones
    gram_default: float = 0.0    # that p for a program the held-out part never showed;
    #                              0: no sequence novelty (a profile without held-out part)
    arch: str = ""               # the syscall numbers the hashes were made of

    # -- probabilities of each kind of novelty -------------------------------------------
    def p_new_program(self) -> float:
        return unseen(self.programs)

    def p_new_child(self, parent: str) -> float:
        """A child never started by `parent`; each of its processes was one chance."""
        return unseen(self.edges.get(parent, {}), self.programs.get(parent, 0))

    def p_fileless(self) -> float:
        return (self.fileless + 1) / (self.execs + 2)

    def p_new_syscall(self, prog: str) -> float:
        return unseen(self.syscalls.get(prog, {}))

    def p_new_sequence(self, prog: str) -> float:
        return self.gram_runs.get(prog, self.gram_default)

    # -- learning ---------------------------------------------------------------------
    @classmethod
    def learn(cls, traces, until_ns: int = 0, sequences: bool = False,
              skip: tuple[int, int] | None = None) -> Profile:
        """From traces (probes.tracefile.Trace) that carry context records; with
        `until_ns`, only what happened before that kernel time; with `skip` (a, b), none
        of what happened from a to b (a held-out fold); with `sequences`, each program's
        sequences too."""
        prof, grams = cls(), {}
        for tr in traces:
            ctx, recs = tr.context, tr.records
            if until_ns:
                ctx, recs = ctx[ctx["ns"] < until_ns], recs[recs["last_ns"] < until_ns]
            if skip is not None:
                a, b = skip
                ctx = ctx[(ctx["ns"] < a) | (ctx["ns"] >= b)]
                recs = recs[(recs["last_ns"] < a) | (recs["last_ns"] >= b)]
            if not len(ctx):
                continue
            table = _table(ctx)
            for p in table.entries.values():
                for img in p.images:
                    prog = program(img.exe, img.flags)
                    prof.programs[prog] = prof.programs.get(prog, 0) + 1
            for r in ctx[ctx["kind"] == CTX_EXEC]:
                parent, child, flags = _exec(table, r)
                if child is None:
                    continue
                prof.execs += 1
                prof.fileless += bool(flags & (EXE_MEMFD | EXE_DELETED))
                if parent:
                    kids = prof.edges.setdefault(parent, {})
                    kids[child] = kids.get(child, 0) + 1
            for prog, counts in _calls(table, recs, tr).items():
                mine = prof.syscalls.setdefault(prog, {})
                for name, n in counts.items():
                    mine[name] = mine.get(name, 0) + n
            if sequences:
                g = _grams(table, tr.records)
                keep = g.ns < until_ns if until_ns else np.ones(len(g.ns), bool)
                if skip is not None:
                    keep &= (g.ns < skip[0]) | (g.ns >= skip[1])
                for i in np.unique(g.at[keep]).tolist():
                    new, old = g.hashes[keep & (g.at == i)], grams.get(g.progs[i])
                    grams[g.progs[i]] = np.unique(new if old is None else np.r_[old, new])
                prof.arch = prof.arch or tr.arch
            span = [int(x) for x in (ctx["ns"].min(), ctx["ns"].max())]
            if len(recs):
                span += [int(recs["first_ns"].min()), int(recs["last_ns"].max())]
            prof.seconds += (max(span) - min(span)) / 1e9
        prof.grams = grams
        return prof

    @classmethod
    def learn_with_heldout(cls, traces, alpha: float, sequences: bool = False
                           ) -> tuple[Profile, Profile | None]:
        """The profile of everything, with the novelty its first three quarters (returned
        too, None without records) would have met in the last quarter: events per hour,
        and their weight at `alpha`; with `sequences`, each program's sequences and the
        rate of runs of new ones there."""
        whole = cls.learn(traces, sequences=sequences)
        span = held_out_span(traces)
        if span is None:
            return whole, None
        _, cut, _ = span
        early = cls.learn(traces, until_ns=cut, sequences=sequences)
        events = []
        for tr in traces:
            events += early.replay(tr, cut)
        runs = [r for tr in traces for r in early.sequence_runs(tr, cut)] \
            if sequences else []
        positions = Counter()
        for tr in traces if sequences else []:
            g = _grams(_table(tr.context), tr.records)
            known = np.array([p in early.grams for p in g.progs] + [False], bool)
            ok = (g.ns >= cut) & known[g.at]
            positions.update(Counter(g.progs[i] for i in g.at[ok].tolist()))
        per = Counter(prog for prog, _ in runs)
        g = (len(runs) + 1) / (sum(positions.values()) + 2) if sequences else 0.0
        for prof in (whole, early) if sequences else ():
            prof.gram_default = g
            prof.gram_runs = {p: (per[p] + 1) / (n + 1 / g) for p, n in positions.items()}
        events += [Event("new_sequence", f"{prog}: {what}", early.p_new_sequence(prog))
                   for prog, what in runs]
        held = active_ns(traces, cut)
        hours = max(held / 3.6e12, 1e-9)
        worth = [weight(e.p, alpha) for e in events]
        whole.heldout = {
            "seconds": round(held / 1e9, 1), "alpha": alpha,
            "events": len(events), "events_per_hour": round(len(events) / hours, 2),
            "weight_per_hour": round(sum(worth) / hours, 3),
            "kinds": dict(Counter(e.kind for e in events)),
            "sequence_positions": sum(positions.values()),
            "strongest": [e.to_json(alpha) for e in
                          sorted(events, key=lambda e: e.p)[:10]]}
        return whole, early

    def exec_events(self, parent: str, child: str, flags: int) -> list[Event]:
        """A program never run, or never started by this parent (the rarer of the two when
        both hold: they are one event seen two ways), and an exec of a memfd or a deleted
        file."""
        prof, out = self, []
        ways = []
        if child not in prof.programs:
            ways.append(Event("new_program", child, prof.p_new_program()))
        if parent and parent in prof.programs and child not in prof.edges.get(parent, {}):
            ways.append(Event("new_edge", f"{parent} -> {child}", prof.p_new_child(parent)))
        if ways:
            out.append(min(ways, key=lambda e: e.p))
        if flags & (EXE_MEMFD | EXE_DELETED):
            out.append(Event("fileless_exec", child, prof.p_fileless()))
        return out

    def replay(self, trace, after_ns: int) -> list[Event]:
        """The novelty events this profile finds in what `trace` holds after `after_ns`."""
        table = _table(trace.context)
        out = []
        ctx = trace.context
        for r in ctx[(ctx["kind"] == CTX_EXEC) & (ctx["ns"] >= after_ns)]:
            parent, child, flags = _exec(table, r)
            if child is not None:
                out += self.exec_events(parent, child, flags)
        recs = trace.records[trace.records["first_ns"] >= after_ns]
        seen: set = set()
        for prog, counts in _calls(table, recs, trace, keyed=True).items():
            key, prog = prog
            known = self.syscalls.get(prog)
            if known is None:
                continue
            for name in counts:
                if name not in known and (key, name) not in seen:
                    seen.add((key, name))
                    out.append(Event("new_syscall", f"{prog}: {name}",
                                     self.p_new_syscall(prog)))
        return out

    def sequence_runs(self, trace, after_ns: int) -> list[tuple[str, str]]:
        """(program, its calls) of each run of new sequences in what `trace` holds after
        `after_ns`: one per process and sequence, as the daemon counts them."""
        g = _grams(_table(trace.context), trace.records)
        table = GramTable(self.grams)
        out, seen = [], set()
        for i, prog in enumerate(g.progs):
            if prog not in self.grams:
                continue
            rows = np.flatnonzero((g.at == i) & (g.ns >= after_ns))
            new = ~table.contains(g.hashes[rows], prog)
            start = new & ((g.prev[rows] == 0) | table.contains(g.prev[rows], prog))
            for r in rows[start].tolist():
                if (int(g.tgids[r]), int(g.hashes[r])) not in seen:
                    seen.add((int(g.tgids[r]), int(g.hashes[r])))
                    out.append((prog, " ".join(trace.syscall_names(g.calls(r)).tolist())))
        return out

    # -- the bundle's lineage.json -----------------------------------------------------
    def to_json(self) -> dict:
        return {"format": FORMAT, "programs": self.programs, "edges": self.edges,
                "syscalls": self.syscalls, "execs": self.execs, "fileless": self.fileless,
                "seconds": round(self.seconds, 1), "heldout": self.heldout,
                "sequences": None if not self.gram_default else {
                    "length": GRAM, "arch": self.arch, "default_p": self.gram_default,
                    "p": self.gram_runs,
                    "hashes": {prog: base64.b64encode(np.asarray(h, "<u8").tobytes()).decode()
                               for prog, h in sorted(self.grams.items())}}}

    @classmethod
    def from_json(cls, d) -> Profile:
        """A profile from a bundle; ValueError naming what is wrong."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("lineage.json: not a lineage profile of this version")

        def counts(x, what: str) -> dict:
            if not isinstance(x, dict) or not all(
                    isinstance(k, str) and type(v) is int and v >= 0 for k, v in x.items()):
                raise ValueError(f"lineage.json: {what} must map names to counts")
            return x

        def nested(x, what: str) -> dict:
            if not isinstance(x, dict):
                raise ValueError(f"lineage.json: {what} must be an object")
            return {k: counts(v, f"{what}[{k!r}]") for k, v in x.items()}

        for key in ("execs", "fileless"):
            if type(d.get(key)) is not int or d[key] < 0:
                raise ValueError(f"lineage.json: {key} must be a count")
        seconds = d.get("seconds", 0.0)
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise ValueError("lineage.json: seconds must be a finite number")
        heldout = d.get("heldout")
        if heldout is not None and not isinstance(heldout, dict):
            raise ValueError("lineage.json: heldout must be an object")
        prof = cls(counts(d.get("programs"), "programs"), nested(d.get("edges"), "edges"),
                   nested(d.get("syscalls"), "syscalls"), d["execs"], d["fileless"],
                   float(seconds), heldout)
        if d.get("sequences") is not None:
            prof._read_sequences(d["sequences"])
        return prof

    def _read_sequences(self, d) -> None:
        """The sequence part of lineage.json (absent from profiles before it)."""
        bad = "lineage.json: sequences must hold length, arch, default_p, p and hashes"
        if not isinstance(d, dict) or d.get("length") != GRAM or \
                not isinstance(d.get("arch"), str) or not isinstance(d.get("p"), dict) or \
                not isinstance(d.get("hashes"), dict):
            raise ValueError(bad + f" (of length {GRAM})")

        def prob(v, what: str) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"lineage.json: sequences {what} must be in [0, 1)")
            return float(v)
        self.gram_default = prob(d.get("default_p"), "default_p")
        self.gram_runs = {str(k): prob(v, f"p[{k!r}]") for k, v in d["p"].items()}
        total = 0
        for prog, text in d["hashes"].items():
            try:
                raw = base64.b64decode(text, validate=True) if isinstance(text, str) else None
            except ValueError:
                raw = None
            if raw is None or len(raw) % 8:
                raise ValueError(f"lineage.json: sequences of {prog[:80]!r} are not base64 "
                                 "of 8-byte hashes")
            h = np.frombuffer(raw, "<u8").astype(np.uint64)
            total += len(h)
            if total > MAX_GRAMS or (len(h) > 1 and not (h[1:] > h[:-1]).all()):
                raise ValueError(f"lineage.json: sequences of {prog[:80]!r}: more than "
                                 f"{MAX_GRAMS} in all, or not sorted and unique")
            self.grams[prog] = h
        self.arch = d["arch"]


def _active(traces) -> list[list[int]]:
    """The kernel-time intervals the traces' records cover, merged, oldest first: a
    baseline and the recordings of later retrainings have days between them."""
    spans = sorted((int(t.records["first_ns"].min()), int(t.records["last_ns"].max()))
                   for t in traces if len(t.records))
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def held_out_span(traces) -> tuple[int, int, int] | None:
    """(start, cut, end) kernel times of the traces' records: the last HELDOUT_FRACTION of
    the recorded time (gaps between recordings not counted) lies after `cut`, and is what
    the held-out estimates are made on."""
    merged = _active(traces)
    if not merged:
        return None
    left = int(sum(b - a for a, b in merged) * HELDOUT_FRACTION)
    for a, b in reversed(merged):
        if b - a >= left:
            return merged[0][0], b - left, merged[-1][1]
        left -= b - a
    return merged[0][0], merged[0][0], merged[-1][1]


def held_out_folds(traces, folds: int) -> list[tuple[int, int]]:
    """The last `folds` HELDOUT_FRACTIONs of the recorded time as (from, to) kernel times,
    the newest first: the first is (cut, end) of held_out_span; each further one ends where
    the one before begins. Fewer where the recordings hold too little time."""
    merged = _active(traces)
    if not merged:
        return []
    total = sum(b - a for a, b in merged)
    out, end = [], merged[-1][1]
    for k in range(1, max(1, min(folds, int(1 / HELDOUT_FRACTION) - 1)) + 1):
        left = int(total * HELDOUT_FRACTION * k)
        start = merged[0][0]
        for a, b in reversed(merged):
            if b - a >= left:
                start = b - left
                break
            left -= b - a
        if start >= end:
            break
        out.append((start, end))
        end = start
    return out


def active_ns(traces, after_ns: int, until_ns: int | None = None) -> int:
    """Recorded time after `after_ns` (and before `until_ns`; gaps between recordings not
    counted)."""
    top = math.inf if until_ns is None else until_ns
    return sum(max(0, min(b, top) - max(a, after_ns)) for a, b in _active(traces))


def _table(ctx: np.ndarray) -> ProcessTable:
    """A process table of a recording alone (no /proc: its pids are another time's)."""
    table = ProcessTable(max_processes=max(1024, 2 * len(ctx)), keep_exited_s=1e9,
                         proc="/nonexistent")
    table.ingest(ctx)
    return table


def _exec(table: ProcessTable, r) -> tuple[str, str | None, int]:
    """(parent program, program exec'd, its EXE_ flags) of an exec context record: the
    parent is the program the process ran before the exec (a fork of its parent runs the
    parent's program), else its parent process's program."""
    p = table.entries.get((int(r["tgid"]), int(r["start_ns"])))
    ns = int(r["ns"])
    img = p.image_at(ns) if p is not None else None
    if img is None:
        return "", None, 0
    before = p.image_at(ns, before_exec=True)
    if before is img:
        q = table.parent(p)
        before = q.image_at(ns) if q is not None else None
    parent = program(before.exe, before.flags) if before is not None else ""
    return parent, program(img.exe, img.flags), img.flags


@dataclass
class _Positions:
    """Every position of a recording's threads that ends a sequence of GRAM syscalls."""
    progs: list          # the programs, indexed by `at`
    at: np.ndarray       # the program that made the position's syscall
    hashes: np.ndarray   # the sequence ending there (uint64)
    prev: np.ndarray     # the one ending at the position before (0: none, a thread start)
    ns: np.ndarray       # kernel time of the position's record
    tgids: np.ndarray
    ids: np.ndarray      # every syscall, in thread order, and where each position is in it
    where: np.ndarray

    def calls(self, row: int) -> np.ndarray:
        end = int(self.where[row])
        return self.ids[end - GRAM + 1:end + 1]


def _grams(table: ProcessTable, recs: np.ndarray) -> _Positions:
    """The sequence ending at each syscall of each thread (but its first GRAM - 1), with
    the program that made it as _calls reads it."""
    recs = recs[np.lexsort((recs["seq"], recs["tid"]))]
    owners = _owners(table, recs, keyed=False)
    index = {o: i for i, o in enumerate(dict.fromkeys(o for o in owners if o is not None))}
    rec_at = np.array([index.get(o, -1) if o is not None else -1 for o in owners] + [-1])
    ids, owner = flatten(recs)
    hashes = stream_grams(ids)
    first = np.r_[True, recs["tid"][owner[1:]] != recs["tid"][owner[:-1]]] if len(ids) \
        else np.zeros(0, bool)
    # the position's index within its thread: GRAM - 1 or more ends a sequence
    starts = np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))
    depth = np.arange(len(ids)) - starts
    at = rec_at[owner] if len(ids) else np.zeros(0, np.int64)
    ok = np.flatnonzero((depth >= GRAM - 1) & (at >= 0))
    prev = np.where(depth[ok] >= GRAM, hashes[np.maximum(ok - 1, 0)], 0).astype(np.uint64)
    return _Positions(list(index), at[ok], hashes[ok], prev,
                      recs["last_ns"][owner[ok]].astype(np.int64),
                      recs["tgid"][owner[ok]].astype(np.int64), ids, ok)


def _owners(table: ProcessTable, recs: np.ndarray, keyed: bool, by=None) -> list:
    """The program (with `keyed`, (process key, program)) each record's syscalls are
    counted to, None where the table does not know it (see _calls); `by`: what names the
    program, of its Image (the guard's file identity), instead of its path."""
    owners = []
    execs = (recs["flags"] & REC_EXEC) != 0
    for tgid, ns, ex in zip(recs["tgid"].tolist(), recs["last_ns"].tolist(), execs.tolist(),
                            strict=True):
        p = table._lookup(tgid, ns)
        img = p.image_at(ns, before_exec=ex) if p is not None else None
        if img is None:
            owners.append(None)
        else:
            prog = by(img) if by is not None else program(img.exe, img.flags)
            owners.append((p.key, prog) if keyed else prog)
    return owners


def thread_labels(trace) -> dict[int, str]:
    """The program each thread of `trace` ran at its last record, as the daemon's blocks
    name it (processes.program_label: an interpreter with its script), "" where the
    process context does not say."""
    from ..context.processes import program_label

    recs = trace.records
    if not len(recs):
        return {}
    table = _table(trace.context)
    order = np.argsort(recs["last_ns"], kind="stable")
    tids = recs["tid"][order]
    last = order[len(order) - 1 - np.unique(tids[::-1], return_index=True)[1]]
    out = {}
    for i in last.tolist():
        tgid, ns = int(recs["tgid"][i]), int(recs["last_ns"][i])
        p = table._lookup(tgid, ns)
        img = p.image_at(ns) if p is not None else None
        out[int(recs["tid"][i])] = "" if img is None else \
            program_label(img.exe, img.args, bool(img.flags & EXE_MEMFD))
    return out


def record_programs(trace) -> list:
    """The program each of `trace`'s chunk records is counted to (as `_calls` counts it),
    None where its process context does not say."""
    if not len(trace.records):
        return []
    return _owners(_table(trace.context), trace.records, False)


def _calls(table: ProcessTable, recs: np.ndarray, trace, keyed: bool = False) -> dict:
    """Syscall counts per program (per (process key, program) with `keyed`): each chunk
    record goes to the program its process ran at the record's last syscall; an exec's
    record (stamped as the exec is done, its syscalls made before it) to the program
    before the exec."""
    if not len(recs):
        return {}
    owners = _owners(table, recs, keyed)
    ids, owner = flatten(recs)
    names = trace.syscall_names(ids)
    out: dict = defaultdict(Counter)
    index = {o: i for i, o in enumerate(dict.fromkeys(o for o in owners if o is not None))}
    own = np.array([index.get(o, -1) if o is not None else -1 for o in owners])[owner]
    keys = list(index)
    for i in np.unique(own[own >= 0]).tolist():
        u, n = np.unique(names[own == i], return_counts=True)
        out[keys[i]].update(dict(zip(u.tolist(), n.tolist(), strict=True)))
    return out
