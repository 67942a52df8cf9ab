"""The online pipeline: chunk records -> per-thread streams -> windows -> known-window cache
-> bounded queue -> batched inference -> confidence bound -> per-process evidence -> alert.

Two threads share it. The reader (the service's main loop) calls `Cutter.ingest()` with
whatever the ring buffer held; it only appends to thread buffers, cuts windows and queues
them, and never waits for anything downstream. The scorer (`Scorer`, its own thread) takes
batches from the queue, scores the windows the cache does not know, applies the bound and
the evidence rule and hands alerts to a callback.

This module is the scorer thread (and `Shadow`, a candidate model judging the same windows
beside the model in use); detect/queue.py says how the queue sheds.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from sysdream.model.vocab import UNK

from ..training.profile import program
from .block import Block
from .cache import WindowCache
from .evidence import Episodes, Evidence, graded
from .judge import NoveltyWeights
from .queue import Counters, WindowQueue
from .view import ModelView

STOP_JOIN_S = 30.0   # how long a stop waits for the scorer's cycle in progress


#                           the first_ns of its exec record (an empty one, sent after it)
# How long after one of our own deliveries the alert taker's (journald's) windows may be
# its handling of it, and the syscalls such handling never makes (docs/architecture.md).
DELIVERY_SLACK_S = 1.0


@dataclass
class Detection:
    """One alert-worthy window, with what the alert needs."""
    block: Block
    row: int
    score: float
    exceedances: int
    evidence_m: int
    model: ModelView
    explanation: dict
    episode: dict | None = None     # for an episode: parent pid, pids, exceedances
    novelty: list = field(default_factory=list)   # lineage events behind it (to_json)
    needed: float = 0.0     # what the evidence had to reach (the alert bound in use)
    program: str = ""       # whose alert bound that was ("": the bound over all programs)


class _Part:
    """Windows of some blocks on their way through one scorer cycle."""

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self.misses = self.size = 0


@dataclass(frozen=True)
class ScorerSettings:
    """How the scorer batches, caches, judges and explains: [detection] and
    [alerts] explain_positions (config.Config.scorer_settings)."""
    evidence_k: float = 0.0     # what the evidence must reach, 0 for the model's alert bound
    evidence_m: int = 8         # windows of a process the evidence sums
    cache_windows: int = 200000
    batch_windows: int = 512
    batch_wait_ms: int = 20
    explain_positions: int = 5


class Scorer:
    """The scorer thread: batches from the queue, cache, inference, bound, evidence."""

    def __init__(self, model: ModelView, queue: WindowQueue, counters: Counters,
                 on_detection, settings: ScorerSettings = ScorerSettings(),
                 observe=None, deliveries=None, peaks: list | None = None,
                 remote=None):
        st = settings
        self.model, self.queue, self.counters = model, queue, counters
        self.remote = remote    # fleet/agent.py Remote: the server scores, when it answers
        self.deliveries = deliveries    # alerts.Deliveries: when we last sent to journald
        self.on_detection, self.observe = on_detection, observe
        # `peaks`: record every excursion's peak there (the calibration replay)
        self.evidence_k, self.peaks = st.evidence_k, peaks
        self.evidence = Evidence(model.evidence_bound(st.evidence_k), st.evidence_m,
                                 peaks=peaks, bounds=model.program_bounds(st.evidence_k),
                                 window_max=model.window_max(st.evidence_k),
                                 evictions=counters.evictions)
        self.episodes = Episodes(self.evidence.k, st.evidence_m,
                                 evictions=counters.evictions)
        self.novelty = NoveltyWeights(counters.evictions)   # process key -> its events
        self.cache = WindowCache(st.cache_windows, model.span)
        self.batch_windows, self.batch_wait = st.batch_windows, st.batch_wait_ms / 1000
        self.explain_positions = st.explain_positions
        self.shadow: Shadow | None = None   # a candidate judging the same windows
        self.beat = time.monotonic()     # last sign of life (the watchdog reads it)
        self.busy_since = 0.0            # start of the batch in progress, 0 when idle
        self._stop = threading.Event()
        self._cut_at = float("inf")     # stopping: past this, a cycle sheds what it holds
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def set_model(self, model: ModelView) -> None:
        with self._lock:
            self.model = model
            self.cache = WindowCache(self.cache.capacity, model.span)
            self._rules(model, self.evidence_k, self.evidence.m)

    def set_rules(self, evidence_k: float, evidence_m: int) -> None:
        with self._lock:
            self.evidence_k = evidence_k
            self._rules(self.model, evidence_k, evidence_m)

    def _rules(self, model: ModelView, evidence_k: float, evidence_m: int) -> None:
        bound, bounds = model.evidence_bound(evidence_k), model.program_bounds(evidence_k)
        cap = model.window_max(evidence_k)
        e = self.evidence
        if (bound, bounds, evidence_m, cap) != (e.k, e.bounds, e.m, e.window_max):
            self.evidence = Evidence(bound, evidence_m, peaks=self.peaks, bounds=bounds,
                                     window_max=cap, evictions=self.counters.evictions)
            self.episodes = Episodes(bound, evidence_m, evictions=self.counters.evictions)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="sysdream-scorer", daemon=True)
        self.thread.start()

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop; first score what is queued for up to `drain_s` seconds. Past that, a cycle
        that has not reached its inference sheds what it holds, and so does the queue,
        counted under reason `shutdown`: a stop takes drain_s plus at most one cycle,
        whatever the backlog."""
        deadline = time.monotonic() + drain_s
        self._cut_at = deadline
        while self.queue.size and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        with self.queue.cond:
            self.queue.cond.notify_all()
        if self.thread:
            # the cycle in progress is finished, not cut: a thread left inside torch when
            # the interpreter exits aborts the process (SIGABRT) instead of a clean exit
            self.thread.join(timeout=max(0.1, deadline - time.monotonic()) + STOP_JOIN_S)
        self.queue.clear("shutdown")

    def _cut(self) -> bool:
        """Stopping and past the drain: the rest of a cycle is shed."""
        return self._stop.is_set() and time.monotonic() > self._cut_at

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat = time.monotonic()
            blocks = self.queue.take(self.batch_windows, 0.2, self.batch_wait)
            if not blocks:
                continue
            self.busy_since = time.monotonic()
            with self._lock:
                model, cache, evidence = self.model, self.cache, self.evidence
            parts = [self._prepare(blocks, model, cache)]
            # Most windows are answered by the cache, and an inference has a fixed cost
            # before its first window: keep taking what is already queued until the misses fill a
            # batch, the cycle holds 16 batches' windows, or the batch wait has passed.
            misses, held = parts[0].misses, parts[0].size
            while (misses < self.batch_windows and held < 16 * self.batch_windows
                   and self.queue.size
                   and time.monotonic() - self.busy_since < self.batch_wait):
                more = self.queue.take(self.batch_windows, 0.0)
                if not more:
                    break
                parts.append(self._prepare(more, model, cache))
                misses += parts[-1].misses
                held += parts[-1].size
            found = self._finish(parts, model, cache, evidence)
            self._shadowed(parts, found)
            self.busy_since = 0.0

    def process(self, blocks: list[Block]) -> list[Detection]:
        """Score blocks at once (one cycle of the scorer thread)."""
        with self._lock:
            model, cache, evidence = self.model, self.cache, self.evidence
        parts = [self._prepare(blocks, model, cache)]
        found = self._finish(parts, model, cache, evidence)
        self._shadowed(parts, found)
        return found

    def _shadowed(self, parts: list[_Part], found: list[Detection]) -> None:
        """The cycle's windows judged once more by the shadow, when there is one."""
        shadow = self.shadow
        if shadow is not None and not self._cut():
            shadow.judge([b for p in parts for b in p.blocks], len(found))

    @staticmethod
    def _prepare(blocks: list[Block], model: ModelView, cache: WindowCache) -> _Part:
        """Tokens, keys and cache answers of some blocks; misses left to `_finish`."""
        blocks = [b for b in blocks if b.spans.shape[1] == model.span]
        part = _Part(blocks)
        if not blocks:
            return part
        part.owner = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
        part.tokens = model.tokens(np.concatenate([b.spans for b in blocks]), blocks,
                                   part.owner)
        part.valid = np.concatenate([b.valid for b in blocks])
        part.starts = np.concatenate([b.starts for b in blocks])
        keys, part.first, inverse = np.unique(cache.keys(part.tokens), return_index=True,
                                              return_inverse=True)
        part.keys, part.inverse = keys, inverse.reshape(-1)
        hit, part.uniq = cache.lookup(keys)
        part.miss = np.flatnonzero(~hit)
        part.misses, part.size = len(part.miss), len(part.tokens)
        return part

    def infer(self, model: ModelView, tokens: np.ndarray, valid: np.ndarray,
              starts: np.ndarray, n: int) -> np.ndarray:
        """Scores of the first n spans: the fleet server's when this daemon is an agent and
        the server answers in time (the n distinct spans sent, not the padding), the local
        model's otherwise (on all rows: a padded batch keeps oneDNN to a few shapes)."""
        if self.remote is not None:
            got = self.remote.score(model, tokens[:n], valid[:n], starts[:n])
            if got is not None:
                return got
        return local_scores(model, tokens, valid, starts, self.batch_windows)[:n]

    def _finish(self, parts: list[_Part], model: ModelView, cache: WindowCache,
                evidence: Evidence) -> list[Detection]:
        parts = [p for p in parts if p.blocks]
        if not parts:
            return []
        c = self.counters
        if self._cut():
            c.windows_shed["shutdown"] += sum(p.size for p in parts)
            return []
        # one inference for the distinct misses of the whole cycle
        miss_keys = np.concatenate([p.keys[p.miss] for p in parts])
        if len(miss_keys):
            ukeys, at = np.unique(miss_keys, return_index=True)

            # one row per distinct key, padded with copies of the last to a batch size of
            # a few (oneDNN compiles and caches a primitive per input shape)
            pad = np.r_[at, np.full(_padded(len(at), self.batch_windows) - len(at), at[-1])]

            def missed(field: str) -> np.ndarray:  # the field's rows of every miss
                return np.concatenate([getattr(p, field)[p.first[p.miss]]
                                       for p in parts])[pad]
            t0 = time.perf_counter()
            got = self.infer(model, missed("tokens"), missed("valid"), missed("starts"),
                             len(at))
            if self.observe:
                self.observe("inference", time.perf_counter() - t0, len(at))
            cache.store(ukeys, got)
            c.windows_scored += len(at)
            c.windows_cached += len(miss_keys) - len(at)  # missed in two parts, scored once
            for p in parts:
                p.uniq[p.miss] = got[np.searchsorted(ukeys, p.keys[p.miss])]
        out = []
        for p in parts:
            out += self._judge(p, model, evidence)
        return out

    def _judge(self, part: _Part, model: ModelView, evidence: Evidence) -> list[Detection]:
        """Bound and evidence for one prepared part, in queue order."""
        c, blocks = self.counters, part.blocks
        scores = part.uniq[part.inverse]
        c.windows_cached += part.size - part.misses  # one update: scrapes read it
        c.batches += 1
        if self.observe:
            self.observe("scores", scores, 0)
        exceeds = model.bound.exceeds(scores)
        for i in np.flatnonzero(exceeds).tolist():
            c.anomalous.add(blocks[part.owner[i]].exe)
        out = []
        # evidence per process, in bulk: windows arrive grouped by block (one thread each)
        bounds = np.r_[0, np.cumsum([len(b) for b in blocks])]
        news = self.novelty.sequence_news(blocks, model)
        for k, b in enumerate(blocks):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            if b.delivery_peer and exceeds[lo:hi].any():
                aside = self._delivery_windows(b, model) & exceeds[lo:hi]
                if aside.any():
                    c.set_aside["own_alert_delivery"] += int(aside.sum())
                    exceeds[lo:hi] &= ~aside
            weights = self.novelty.weigh(b, model, graded(model.bound, model.alpha,
                                                     scores[lo:hi], exceeds[lo:hi],
                                                     evidence.window_max),
                                    None if news is None else (news[0][lo:hi],
                                                               news[1][lo:hi]))
            key, prog = b.key or b.tgid, b.label or (program(b.exe) if b.exe else "")
            # a thread of the group exiting: each distinct exit window counts once
            exits = part.keys[part.inverse[lo:hi]] if b.final and b.tid != b.tgid else None
            for i, n in evidence.add_many(key, weights, prog, exits):
                out.append(Detection(b, i, float(scores[lo + i]), n, evidence.m, model, {},
                                     novelty=self.novelty.of(b, i, model, evidence.m,
                                                              spend=True),
                                     needed=evidence.bound_for(prog), program=prog))
            if b.final and b.tid == b.tgid:     # the process exits: its evidence goes
                evidence.forget(key)
            # the same windows, as part of an episode of their parent's young children
            young = np.flatnonzero(b.starts < evidence.m * model.s)
            if b.parent and young.size:
                for j, n, pids in self.episodes.add_many(b.parent, b.tgid, weights[young],
                                                         b.ns):
                    i = int(young[j])
                    ep = {"parent_pid": b.parent[0], "pids": pids, "exceedances": round(n, 2),
                          "windows": self.episodes.m}
                    out.append(Detection(b, i, float(scores[lo + i]), n, evidence.m, model,
                                         {}, ep, self.novelty.of(b, i, model, evidence.m),
                                         needed=evidence.k))
        # explained in one batch: an alert storm raises hundreds a cycle, and one window
        # scored alone costs about as much as a batch of a hundred
        for d, ex in zip(out, self.explain_many(model, [(d.block, d.row) for d in out]),
                         strict=True):
            d.explanation = ex
            self.on_detection(d)
        return out

    def _delivery_windows(self, b: Block, model: ModelView) -> np.ndarray:
        """The windows of the alert taker (journald) that are its handling of our own
        delivery: within DELIVERY_SLACK_S after one of our sends, and holding none of the
        syscalls a log daemon taking a message never makes (docs/architecture.md)."""
        if self.deliveries is None or not self.deliveries.near(
                b.first_ns, b.ns, int(DELIVERY_SLACK_S * 1e9)):
            return np.zeros(len(b), bool)
        never = model.never_for_delivery
        return ~np.isin(b.spans[:, model.lead:], never).any(axis=1)

    def explain_many(self, model: ModelView, items: list[tuple[Block, int]]) -> list[dict]:
        """Rescore windows with detail, together (padded to a batch size of a few shapes,
        as inference is), and explain each (positions in the thread's stream)."""
        if not items:
            return []
        n = len(items)
        spans = np.stack([b.spans[row] for b, row in items])
        tokens = model.tokens(spans, [b for b, _ in items], np.arange(n))
        valid = np.array([b.valid[row] for b, row in items])
        names = []
        for k in range(n):
            one = model.names(spans[k])
            if model.conditioned:   # what the network read there: the program's token
                one[0] = one[model.p] = model.det.vocab.decode([tokens[k, 0]])[0]
            names.append(one)
        explained, scores = model.det.explain_spans(
            tokens, valid, model.lead, names, self.explain_positions,
            rows=_padded(n, self.batch_windows), batch=self.batch_windows)
        sigmas = model.bound.sigmas(scores.score)
        out = []
        for k, (b, row) in enumerate(items):
            ex = explained[k]
            shift = int(b.starts[row]) - model.lead
            for item in ex["surprises"]:
                item["position_in_sequence"] += shift
            for item in ex.get("attention", []):
                item["position"] += shift
            ex["start"] = int(b.starts[row])
            ex["context"] = [str(x) for x in names[k][:model.lead] if x != "<pad>"]
            ex["unknown"] = sorted({str(x) for x, t in zip(names[k].tolist(), tokens[k].tolist(),
                                                           strict=True) if t == UNK})
            ex["bound"] = model.bound.bound
            ex["sigmas"] = float(sigmas[k])
            out.append(ex)
        return out


class Shadow:
    """A candidate model judging the windows the model in use judges, with its whole
    alert rule (scheduled retraining, daemon/retraining.py): its alerts are counted, never
    sent, beside the alerts of the model in use on the same windows."""

    def __init__(self, model: ModelView, settings: ScorerSettings = ScorerSettings(),
                 deliveries=None):
        c = Counters()
        self.model = model
        self.scorer = Scorer(model, WindowQueue(1, c), c, self._alert, settings,
                             deliveries=deliveries)
        self.alerts = self.current = self.windows = 0
        self.by_exe: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def _alert(self, d: Detection) -> None:
        self.alerts += 1
        self.by_exe[d.block.exe or d.block.comm] += 1

    def judge(self, blocks: list[Block], current: int) -> None:
        """`blocks` of one cycle, in which the model in use raised `current` alerts."""
        with self._lock:
            self.current += current
            span = self.model.span
            self.windows += sum(len(b) for b in blocks if b.spans.shape[1] == span)
            self.scorer.process(blocks)

    def result(self) -> dict:
        with self._lock:
            return {"windows": self.windows, "alerts": self.alerts, "current": self.current,
                    "by_exe": dict(self.by_exe)}


def _padded(n: int, batch: int) -> int:
    """The batch size n windows are scored at: the next power of two up to `batch` (at
    least 8), a multiple of `batch` beyond, so inference sees a handful of shapes."""
    if n > batch:
        return -(-n // batch) * batch
    return min(max(8, 1 << (n - 1).bit_length()), batch)


def local_scores(model: ModelView, tokens: np.ndarray, valid: np.ndarray,
                 starts: np.ndarray, batch: int) -> np.ndarray:
    """The local model's scores of spans (the rows of one padded batch)."""
    from sysdream.model.scoring import score
    w = model.geom.windows(tokens, valid, starts)
    return score(model.det.net, w, batch, detail=False).score
