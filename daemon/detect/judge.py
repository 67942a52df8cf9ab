"""The lineage profile at detection time (the Judge): novelty events for exec context records
and for windows (new syscalls, new sequences), weighed as evidence beside the sequence
model. The profile itself, its learning and the meaning of each kind: training/profile.py.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import numpy as np

from sysdream.probes import syscalls
from sysdream.probes.layout import CTX_EXEC

from ..context.processes import ProcessTable
from ..training.profile import GRAM, Event, GramTable, Profile, _exec, gram_hashes, program
from ..training.profile import weight as lineage_weight
from .block import PAD_NUMBER


class Judge:
    """The profile at detection time: events for exec context records, and per-program
    syscall tables for windows."""

    def __init__(self, profile: Profile, arch: str, alpha: float, max_processes: int = 65536):
        self.profile, self.alpha, self.max = profile, alpha, max_processes
        self.arch = arch
        self._known: dict[str, np.ndarray] = {}
        self._grams: GramTable | None = None       # built on first use
        self.pending: OrderedDict[tuple, list[Event]] = OrderedDict()
        self.reported: OrderedDict[tuple, set] = OrderedDict()
        self.events = Counter()                    # by kind, for the metrics

    def exec_events(self, parent: str, child: str, flags: int) -> list[Event]:
        return self.profile.exec_events(parent, child, flags)

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

    def sequence_news(self, spans: np.ndarray, lead: int, codes: np.ndarray,
                      progs: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """For the rows of `spans` ([k, lead + p] numbers, PAD_NUMBER before a thread's
        start), row i made by progs[codes[i]] (none where codes[i] < 0), in one pass:
        (starts [k, p]: the targets that end a sequence their program never made after one
        that it did make; hashes [k, p + 1] of the sequences ending from the position before
        the first target to the last). None where the profile holds no sequences of this
        architecture."""
        prof = self.profile
        if not prof.grams or prof.arch != self.arch or lead < GRAM or not prof.gram_default:
            return None
        p = spans.shape[1] - lead
        # the sequences ending from the position before the first target to the last
        win = np.lib.stride_tricks.sliding_window_view(spans[:, lead - GRAM:], GRAM,
                                                       axis=1)[:, :p + 1]
        h = gram_hashes(win)
        # no PAD in the sequence: a span holds PAD only before the thread's first syscall
        # (or the context lost at a gap) and after its last, so the ends tell
        real = (win[..., 0] < 65536) & (win[..., -1] < 65536)
        if self._grams is None:
            self._grams = GramTable(prof.grams)
        new = np.zeros(h.shape, bool)
        for c in np.unique(codes[codes >= 0]).tolist():
            if progs[c] in prof.grams:
                rows = codes == c
                new[rows] = ~self._grams.contains(h[rows], progs[c])
        new &= real
        return new[:, 1:] & ~new[:, :-1], h

    def new_sequences(self, key: tuple, prog: str, spans: np.ndarray, lead: int,
                      mine: np.ndarray | None = None,
                      news: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> list[tuple[int, Event]]:
        """(row, event) for each run of sequences `prog` never made among the targets of
        `spans` (see sequence_news, whose answer for these rows `news` may hold already;
        `mine` [k, p]: the targets this program made, all where None), the first time this
        process makes that sequence."""
        if prog not in self.profile.grams:
            return []
        if news is None:
            news = self.sequence_news(spans, lead, np.zeros(len(spans), np.int64), [prog])
            if news is None:
                return []
        start, h = news
        if mine is not None:
            start = start & mine
        if not start.any():
            return []
        done = self._reported((key, prog, "seq"))
        out = []
        pr = self.profile.p_new_sequence(prog)
        rows, cols = np.nonzero(start)
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            x = int(h[row, col + 1])
            if x in done:
                continue
            if len(done) < 4096:
                done.add(x)
            calls = spans[row, lead + col - GRAM + 1:lead + col + 1]
            names = " ".join(syscalls.names(calls, self.arch).tolist())
            out.append((row, Event("new_sequence", f"{prog}: {names}", pr)))
            self.events["new_sequence"] += 1
        return out

    def _reported(self, key: tuple) -> set:
        """What was reported already for a (process, program[, kind]): each news once."""
        done = self.reported.get(key)
        if done is None:
            done = self.reported[key] = set()
            while len(self.reported) > self.max:
                self.reported.popitem(last=False)
        return done

    def new_syscalls(self, key: tuple, prog: str, targets: np.ndarray) -> list[tuple[int, Event]]:
        """(row, event) for each syscall in `targets` ([k, p] numbers) that `prog` never
        made in the baseline, the first time this process makes it under this program."""
        known = self.known(prog)
        if known is None:
            return []
        novel = ~known[np.minimum(targets, 65536)]
        if not novel.any():
            return []
        done = self._reported((key, prog))
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


class NoveltyWeights:
    """The lineage novelty as evidence: the Judge's events for a block of windows added to
    the windows' graded weights (detect/scorer.py's evidence rule), and the events each
    process's next alert carries. `b` is a detect/block.py Block, `model` the ModelView
    whose `lineage` is the Judge."""

    def __init__(self, evictions: Counter | None = None):
        self.novel: OrderedDict = OrderedDict()     # process key -> its novelty events
        self.evictions = Counter() if evictions is None else evictions   # what was dropped

    @staticmethod
    def sequence_news(blocks: list, model
                      ) -> tuple[np.ndarray, np.ndarray] | None:
        """Judge.sequence_news for the windows of every block one program made, in one
        pass (a block with an exec inside is judged per program in `weigh`)."""
        judge = model.lineage
        if judge is None or not judge.profile.grams:
            return None
        progs: dict[str, int] = {}
        codes = [progs.setdefault(program(b.exe), len(progs))
                 if b.exe and not b.marks and b.unsure_from < 0 else -1 for b in blocks]
        if not progs:
            return None
        return judge.sequence_news(np.concatenate([b.spans for b in blocks]), model.lead,
                                   np.repeat(codes, [len(b) for b in blocks]), list(progs))

    def weigh(self, b, model, base: np.ndarray,
              news: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The block's window weights: `base` (each window's graded weight), plus the weight
        of each lineage novelty (an exec the profile never saw, on the process's first
        window after it; a syscall or a run of sequences its program never made, on the
        first window holding it).
        The events are kept for the process's next alert."""
        judge = model.lineage
        if judge is None:
            return base
        # an exec's events go to the first window holding a syscall after the exec
        # (the block may begin with windows the program before it made)
        at = 0 if b.exec_at < 0 else min(int(np.searchsorted(
            b.starts + model.p, b.exec_at, side="right")), len(b) - 1)
        events = [(at, e) for e in judge.take(b.key)] if b.key else []
        key = b.key or (b.tgid, 0)
        targets = b.spans[:, model.lead:]
        # each syscall against the program that made it: one up to an exec (its record
        # included, as the profile learnt them) the program before that exec; none after
        # an exec whose program the process table does not know yet
        if not b.marks and b.unsure_from < 0:       # one program made all of them
            if b.exe:
                events += judge.new_syscalls(key, program(b.exe), targets)
                events += judge.new_sequences(key, program(b.exe), b.spans, model.lead,
                                              news=news)
            return self._add(b, model, base, events)
        pos = b.starts[:, None] + np.arange(model.p)[None, :]
        owner = np.full(pos.shape, len(b.marks), np.int64)
        for i in range(len(b.marks) - 1, -1, -1):
            owner[pos < b.marks[i][0]] = i
        if b.unsure_from >= 0:
            owner[pos >= b.unsure_from] = -1
        exes = [m[1] for m in b.marks] + [b.exe]
        for i in np.unique(owner[owner >= 0]).tolist():
            if exes[i]:
                events += judge.new_syscalls(key, program(exes[i]),
                                             np.where(owner == i, targets, PAD_NUMBER))
                events += judge.new_sequences(key, program(exes[i]), b.spans, model.lead,
                                              owner == i)
        return self._add(b, model, base, events)

    def _add(self, b, model, base: np.ndarray, events: list
             ) -> np.ndarray:
        """Window weights with the events' weights added; the events kept for alerts."""
        if not events:
            return base
        weights = base.copy()
        key = b.key or b.tgid
        mine = self.novel.get(key)
        if mine is None:
            mine = self.novel[key] = []
            while len(self.novel) > 65536:
                self.novel.popitem(last=False)
                self.evictions["lineage_events"] += 1
        for row, e in events:
            weights[row] += lineage_weight(e.p, model.alpha)
            mine.append((int(b.starts[row]), e.to_json(model.alpha)))
        del mine[:-16]
        return weights

    def of(self, b, row: int, model, m: int, spend: bool = False) -> list[dict]:
        """The lineage events among the evidence's last m windows up to window `row`
        (those that counted); `spend`: forgotten, as the evidence starts over."""
        key = b.key or b.tgid
        mine = self.novel.pop(key, []) if spend else self.novel.get(key, [])
        since = int(b.starts[row]) - m * model.s
        return [e for pos, e in mine if pos >= since]
