"""Lineage novelty: what the learnt host never did, as evidence beside the sequence model.

The sequence model judges windows of syscalls; it does not know which program made them,
nor what started it. The lineage profile, learnt from the same baseline (the trace's
process context records), says which programs ran, which program started which (exec
edges), which syscalls each program made, and how often a program was run from a memfd or
a deleted file. At detection, four kinds of novelty are events:

    new_program     an exec of a program the baseline never ran
    new_edge        a known program starting one it never started
    fileless_exec   an exec of a memfd or a deleted file
    new_syscall     a program making a syscall it never made

How surprising each is comes from the baseline itself, not from a hand-set threshold: the
chance that the next opportunity shows something new is the Good-Turing estimate of the
unseen mass, (things seen once + 1) / (opportunities + 2). A program that started twenty
different children, several of them once (an administrator's shell), makes a new child
unremarkable; a web application that started the same two children a thousand times makes
a third one rare. An event of probability p weighs log p / log alpha windows above the
bound, alpha being the bound's own tail (1 - confidence): the per-process evidence rule
adds these weights to its count of windows above the bound (daemon/pipeline.py).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field

import numpy as np

from sysdream.probes import syscalls
from sysdream.probes.layout import CTX_EXEC, EXE_DELETED, EXE_MEMFD, REC_EXEC
from sysdream.probes.streams import flatten

from .processes import ProcessTable

FORMAT = 1
HELDOUT_FRACTION = 0.25       # the baseline's last quarter estimates the novelty rates
MAX_WEIGHT = 8.0
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

    # -- learning ---------------------------------------------------------------------
    @classmethod
    def learn(cls, traces, until_ns: int = 0) -> Profile:
        """From traces (probes.tracefile.Trace) that carry context records; with
        `until_ns`, only what happened before that kernel time."""
        prof = cls()
        for tr in traces:
            ctx, recs = tr.context, tr.records
            if until_ns:
                ctx, recs = ctx[ctx["ns"] < until_ns], recs[recs["last_ns"] < until_ns]
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
            span = [int(x) for x in (ctx["ns"].min(), ctx["ns"].max())]
            if len(recs):
                span += [int(recs["first_ns"].min()), int(recs["last_ns"].max())]
            prof.seconds += (max(span) - min(span)) / 1e9
        return prof

    @classmethod
    def learn_with_heldout(cls, traces, alpha: float) -> tuple[Profile, Profile | None]:
        """The profile of everything, with the novelty its first three quarters (returned
        too, None without records) would have met in the last quarter: events per hour,
        and their weight at `alpha`."""
        whole = cls.learn(traces)
        span = held_out_span(traces)
        if span is None:
            return whole, None
        start, cut, end = span
        early = cls.learn(traces, until_ns=cut)
        events = []
        for tr in traces:
            events += early.replay(tr, cut)
        hours = max((end - cut) / 3.6e12, 1e-9)
        worth = [weight(e.p, alpha) for e in events]
        whole.heldout = {
            "seconds": round((end - cut) / 1e9, 1), "alpha": alpha,
            "events": len(events), "events_per_hour": round(len(events) / hours, 2),
            "weight_per_hour": round(sum(worth) / hours, 3),
            "kinds": dict(Counter(e.kind for e in events)),
            "strongest": [e.to_json(alpha) for e in
                          sorted(events, key=lambda e: e.p)[:10]]}
        return whole, early

    def replay(self, trace, after_ns: int) -> list[Event]:
        """The novelty events this profile finds in what `trace` holds after `after_ns`."""
        table = _table(trace.context)
        judge = Judge(self, trace.arch, alpha=0.5)
        out = []
        ctx = trace.context
        for r in ctx[(ctx["kind"] == CTX_EXEC) & (ctx["ns"] >= after_ns)]:
            parent, child, flags = _exec(table, r)
            if child is not None:
                out += judge.exec_events(parent, child, flags)
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

    # -- the bundle's lineage.json -----------------------------------------------------
    def to_json(self) -> dict:
        return {"format": FORMAT, "programs": self.programs, "edges": self.edges,
                "syscalls": self.syscalls, "execs": self.execs, "fileless": self.fileless,
                "seconds": round(self.seconds, 1), "heldout": self.heldout}

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
        return cls(counts(d.get("programs"), "programs"), nested(d.get("edges"), "edges"),
                   nested(d.get("syscalls"), "syscalls"), d["execs"], d["fileless"],
                   float(seconds), heldout)


def held_out_span(traces) -> tuple[int, int, int] | None:
    """(start, cut, end) kernel times of the traces' records: the last HELDOUT_FRACTION of
    the time after `cut` is what the held-out estimates are made on."""
    firsts = [int(t.records["first_ns"].min()) for t in traces if len(t.records)]
    lasts = [int(t.records["last_ns"].max()) for t in traces if len(t.records)]
    if not firsts:
        return None
    start, end = min(firsts), max(lasts)
    return start, end - int((end - start) * HELDOUT_FRACTION), end


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


def _calls(table: ProcessTable, recs: np.ndarray, trace, keyed: bool = False) -> dict:
    """Syscall counts per program (per (process key, program) with `keyed`): each chunk
    record goes to the program its process ran at the record's last syscall; an exec's
    record (stamped as the exec is done, its syscalls made before it) to the program
    before the exec."""
    if not len(recs):
        return {}
    owners = []
    execs = (recs["flags"] & REC_EXEC) != 0
    for tgid, ns, ex in zip(recs["tgid"].tolist(), recs["last_ns"].tolist(), execs.tolist(),
                            strict=True):
        p = table._lookup(tgid, ns)
        img = p.image_at(ns, before_exec=ex) if p is not None else None
        if img is None:
            owners.append(None)
        else:
            prog = program(img.exe, img.flags)
            owners.append((p.key, prog) if keyed else prog)
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


class Judge:
    """The profile at detection time: events for exec context records, and per-program
    syscall tables for windows."""

    def __init__(self, profile: Profile, arch: str, alpha: float, max_processes: int = 65536):
        self.profile, self.alpha, self.max = profile, alpha, max_processes
        self.arch = arch
        self._known: dict[str, np.ndarray] = {}
        self.pending: OrderedDict[tuple, list[Event]] = OrderedDict()
        self.reported: OrderedDict[tuple, set] = OrderedDict()
        self.events = Counter()                    # by kind, for the metrics

    def exec_events(self, parent: str, child: str, flags: int) -> list[Event]:
        """A program never run, or never started by this parent (the rarer of the two when
        both hold: they are one event seen two ways), and an exec of a memfd or a deleted
        file."""
        prof, out = self.profile, []
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

    def on_context(self, records: np.ndarray, table: ProcessTable) -> None:
        """Exec records (already in the process table): their events wait for the
        process's next window."""
        with table._lock:       # the scorer thread reads the table for alerts
            self._on_context(records, table)

    def _on_context(self, records: np.ndarray, table: ProcessTable) -> None:
        for r in records[records["kind"] == CTX_EXEC]:
            parent, child, flags = _exec(table, r)
            if child is None:
                continue
            events = self.exec_events(parent, child, flags)
            if events:
                key = (int(r["tgid"]), int(r["start_ns"]))
                self.pending.setdefault(key, []).extend(events)
                self.pending.move_to_end(key)
                while len(self.pending) > self.max:
                    self.pending.popitem(last=False)
                for e in events:
                    self.events[e.kind] += 1

    def take(self, key: tuple) -> list[Event]:
        return self.pending.pop(key, [])

    def known(self, prog: str) -> np.ndarray | None:
        """A bool table over syscall numbers (PAD_NUMBER and beyond: True) of the syscalls
        `prog` made in the baseline; None for a program the baseline never ran."""
        got = self._known.get(prog)
        if got is None and prog in self.profile.syscalls:
            got = np.zeros(65537, bool)
            got[65536] = True
            got[syscalls.known_numbers(list(self.profile.syscalls[prog]), self.arch)] = True
            self._known[prog] = got
        return got

    def new_syscalls(self, key: tuple, prog: str, targets: np.ndarray) -> list[tuple[int, Event]]:
        """(row, event) for each syscall in `targets` ([k, p] numbers) that `prog` never
        made in the baseline, the first time this process makes it under this program."""
        known = self.known(prog)
        if known is None:
            return []
        novel = ~known[np.minimum(targets, 65536)]
        if not novel.any():
            return []
        done = self.reported.get((key, prog))
        if done is None:
            done = self.reported[(key, prog)] = set()
            while len(self.reported) > self.max:
                self.reported.popitem(last=False)
        out = []
        p = self.profile.p_new_syscall(prog)
        rows, cols = np.nonzero(novel)
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            nr = int(targets[row, col])
            if nr not in done:
                done.add(nr)
                name = str(syscalls.names(np.array([nr]), self.arch)[0])
                out.append((row, Event("new_syscall", f"{prog}: {name}", p)))
                self.events["new_syscall"] += 1
        return out
