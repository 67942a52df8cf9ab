"""The statistic that raises an alert, and its calibration.

Each window a process makes weighs what it is worth as evidence: a window above the
window bound weighs log p / log alpha (p its upper-tail probability under the window
bound's Gaussian, alpha that bound's own upper tail: 1 at the bound, 2 where a window is as
rare as two at the bound, at most GRADED_MAX), a window below it nothing, and a lineage
novelty (daemon/training/profile.py) adds the weight its probability is worth. A process's
*evidence* is the sum of the weights of its last m windows, plus those of its older
windows halving every HALF_LIFE windows; it alerts when that reaches the *alert bound*,
and then starts over. One rule for every
process: a short-lived one is judged on all it did as soon as that stands out, without
waiting for its exit.

The alert bound is the paper's confidence interval applied to the statistic that raises an
alert rather than to single windows. `sysdream train` replays the whole rule, with a model
trained on the baseline's first three quarters, on its held-out last quarter
(daemon/detect/replay.py) with no alert bound. Every *excursion* there (a stretch of a process's
windows over which its evidence stays above zero) gives one sample: its peak. The Gaussian
(model/calibration.py, transform chosen the same way as for windows) is fitted to the
peaks; the bound is the interval's upper end at the configured confidence, and the expected
false alerts per hour of activity like the baseline's are the excursions per hour times the
interval's upper tail. Programs differ (a multi-threaded interpreter's evidence swings far
wider than a shell utility's), so a program with enough excursions of its own gets its own
Gaussian and the others share one, which also holds for programs never seen there. See
docs/architecture.md, "Alert-level calibration".
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

GRADED_MAX = 8.0    # no window counts for more than this many at the bound
MIN_PEAKS = 10      # fewer excursions than this in the held-out part: no alert bound fitted
MAX_KS = 0.5        # a normal fit this far from its peaks (Kolmogorov-Smirnov) is no fit:
#                     a loop repeating one pattern gives the same peak every time, and a
#                     "bound" at that peak alerts on the loop itself
TARGET_PER_HOUR = 1.0   # what the default confidence keeps the expected false alerts under


def graded(bound, alpha: float, scores: np.ndarray, exceeds: np.ndarray,
           cap: float = GRADED_MAX) -> np.ndarray:
    """Each window's weight as evidence (see the module's docstring); `bound` is the window
    bound (model.calibration.GaussianBound), `alpha` its upper tail; no window weighs more
    than `cap`."""
    out = np.zeros(len(scores))
    if exceeds.any():
        z = bound.sigmas(scores[exceeds])
        logp = np.log(np.maximum(0.5 * _erfc(z / math.sqrt(2)), 1e-300))
        out[exceeds] = np.clip(logp / math.log(alpha), 1.0, max(cap, 1.0))
    return out


def _erfc(x: np.ndarray) -> np.ndarray:
    return np.array([math.erfc(v) for v in np.asarray(x, np.float64).tolist()])


HALF_LIFE = 64     # windows over which a process's evidence halves ([detection]
#                    evidence_half_life_windows); long against the 8 windows (128
#                    syscalls) of benign filler an evasion puts between odd windows
FLOOR = 0.05       # evidence decayed below this is none: the excursion has ended
MAX_EXITS = 256    # distinct exit windows remembered per thread group
EPISODE_HALF_LIFE_S = 60.0   # an episode's window weighs half after this long: children
#                              spaced 10 s apart (issue 33 #9) still add up


class Evidence:
    """Per process: alert when its evidence reaches the bound of the program that made
    it (`bounds`, by program), `bound` for a program without its own. The evidence is
    the weights of its last m windows in full, plus the older ones decaying by half
    every `half_life` windows after they leave the last m (issue 32 #6, issue 33 #9):
    odd windows spread out among benign ones still add up, where a sum of the last m
    alone forgot each before the next came. Keyed by the process's key (tgid, start)
    where the process table knows it, so a reused pid starts afresh; by the tgid alone
    where it does not. With `peaks` (a list), (program, peak) of every excursion is
    appended to it as it ends (the calibration replay: bound = inf). `window_max`: what
    one window may weigh under this rule.

    A thread group's threads exiting count once: `add_many(..., exits=keys)` with the
    window contents of a (non-leader) thread's final block weighs each distinct exit
    window once per process, so 10,000 threads ending the same way are one odd exit,
    not 10,000."""

    def __init__(self, bound: float, m: int, max_processes: int = 65536,
                 peaks: list | None = None, bounds: dict[str, float] | None = None,
                 window_max: float = GRADED_MAX, half_life: float = HALF_LIFE,
                 evictions: dict | None = None):
        self.k, self.m, self.max = float(bound), m, max_processes
        # counts what was dropped still holding evidence: an attacker who makes processes
        # enough to push its own out would otherwise pass unseen (docs/security.md)
        self.evictions = evictions if evictions is not None else {}
        self.bounds = dict(bounds or {})
        self.window_max = window_max
        self.half_life = float(half_life)
        self.decay = 0.5 ** (1.0 / self.half_life)
        self.recent: OrderedDict = OrderedDict()    # key -> [last m weights, older]
        self.exits: OrderedDict = OrderedDict()     # key -> exit windows already counted
        self.peaks = peaks
        self.peak: dict = {}        # key -> [peak, program] of its running excursion

    def bound_for(self, program: str) -> float:
        return self.bounds.get(program, self.k)

    def _state(self, key) -> list:
        st = self.recent.get(key)
        if st is None:
            st = self.recent[key] = [deque(maxlen=self.m), 0.0]
            if len(self.recent) > self.max:
                old, held = self.recent.popitem(last=False)
                self.exits.pop(old, None)
                self._end(old)
                if any(held[0]) or held[1]:     # its windows, or its decayed older ones
                    self.evictions["evidence"] = self.evictions.get("evidence", 0) + 1
        else:
            self.recent.move_to_end(key)
        return st

    def _push(self, st: list, weight: float) -> float:
        """One window into a process's state; its evidence now."""
        d = st[0]
        older = st[1] * self.decay + (d[0] if len(d) == d.maxlen else 0.0)
        st[1] = older if older >= FLOOR else 0.0
        d.append(weight)
        return sum(d) + st[1]

    def add(self, key, weight: float, program: str = "") -> float:
        """Record one window's weight; returns the evidence when it reaches the bound (and
        then starts over), else 0."""
        st = self._state(key)
        n = self._push(st, float(weight))
        if self.peaks is not None:
            if n > 1e-12:
                p = self.peak.setdefault(key, [0.0, program])
                p[0], p[1] = max(p[0], n), program
            else:
                self._end(key)
        if weight > 0 and n >= self.bounds.get(program, self.k) - 1e-9:
            st[0].clear()
            st[1] = 0.0
            self._end(key)
            return n
        return 0

    def add_many(self, key, weights: np.ndarray, program: str = "",
                 exits: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Record a run of one process's window weights (made by `program`); (index,
        evidence) of each that reaches the bound. `exits`: the windows' content keys when
        the run is an exiting thread's last (see the class). A run of zeros costs at most
        m + 1 steps: past them the older evidence decays by the rest at once."""
        weights = np.asarray(weights, np.float64)
        if exits is not None and weights.any():
            weights = weights.copy()
            seen = self.exits.get(key)
            if seen is None:
                seen = self.exits[key] = set()
                while len(self.exits) > self.max:
                    self.exits.popitem(last=False)
            for i in np.flatnonzero(weights).tolist():
                w = int(exits[i])
                if w in seen:
                    weights[i] = 0.0
                elif len(seen) < MAX_EXITS:
                    seen.add(w)
        if not weights.any():
            st = self.recent.get(key)
            if st is None:
                return []
            if not any(st[0]) and not st[1]:
                self.recent.move_to_end(key)
                return []
            steps = min(len(weights), self.m + 1)
            for _ in range(steps):
                self.add(key, 0.0, program)
            rest = len(weights) - steps
            if rest:
                older = st[1] * self.decay ** rest
                st[1] = older if older >= FLOOR else 0.0
                if self.peaks is not None and not any(st[0]) and not st[1]:
                    self._end(key)
            return []
        return [(i, n) for i, x in enumerate(weights.tolist())
                if (n := self.add(key, x, program))]

    def forget(self, key) -> None:
        """The process exited: its evidence goes (an excursion ends with it)."""
        self.recent.pop(key, None)
        self.exits.pop(key, None)
        self._end(key)

    def flush(self) -> None:
        """End every running excursion (the end of a replay)."""
        for key in list(self.peak):
            self._end(key)

    def _end(self, key) -> None:
        if self.peaks is not None and (p := self.peak.pop(key, None)) is not None:
            self.peaks.append((p[1], p[0]))


class Episodes:
    """Related short-lived processes judged together. The young windows (among a process's
    first m) of the children of one parent form an episode: each window's weight halves
    every `span_s` seconds (issue 33 #9: children spaced further apart than a fixed span
    still add up; after 8 half-lives a window is dropped), and the episode alerts when
    what its windows weigh now reaches the bound and they come from at least two
    processes (one process alone is the per-process rule's business), so an attack split
    into short steps, none standing out alone, does not pass unseen."""

    def __init__(self, bound: float, m: int, span_s: float = EPISODE_HALF_LIFE_S,
                 max_groups: int = 4096, evictions: dict | None = None):
        self.k, self.m, self.span_ns, self.max = float(bound), m, int(span_s * 1e9), max_groups
        self.evictions = evictions if evictions is not None else {}
        self.recent: OrderedDict[tuple, deque] = OrderedDict()

    def add_many(self, key: tuple, tgid: int, weights: np.ndarray, ns: int
                 ) -> list[tuple[int, float, list[int]]]:
        """Record a run of one process's young window weights (kernel time `ns`); (index,
        evidence, pids) of each window that completes an episode."""
        if not key or not len(weights):
            return []
        d = self.recent.get(key)
        if d is None:
            if not np.any(weights):
                return []
            d = self.recent[key] = deque(maxlen=8 * self.m)
            if len(self.recent) > self.max:
                _, held = self.recent.popitem(last=False)
                if any(x for _, _, x in held):
                    self.evictions["episodes"] = self.evictions.get("episodes", 0) + 1
        else:
            self.recent.move_to_end(key)
        out = []
        for i, x in enumerate(np.asarray(weights, np.float64).tolist()):
            if x:
                d.append((ns, tgid, x))
            while d and d[0][0] < ns - 8 * self.span_ns:
                d.popleft()
            if not x:
                continue
            pids = sorted({e[1] for e in d})
            n = sum(e[2] * 0.5 ** ((ns - e[0]) / self.span_ns) for e in d)
            if n >= self.k - 1e-9 and len(pids) >= 2:
                out.append((i, n, pids))
                d.clear()
        return out


@dataclass
class AlertBound:
    """The alert bound of a host's model: Gaussians over the held-out excursion peaks
    (model.calibration.GaussianBound), one per program with enough excursions of its own
    (`programs`) and one over the others (`fit`), which also holds for programs the
    held-out part never showed; and how often excursions happened there."""
    fit: object                 # GaussianBound over the peaks of programs without their own
    excursions_per_hour: float  # all programs
    seconds: float              # of held-out activity the peaks come from
    programs: dict = field(default_factory=dict)    # program -> its own GaussianBound

    @property
    def bound(self) -> float:
        """For a program without a bound of its own."""
        return max(self.fit.bound, 1.0)     # never below one window at the window bound

    def bounds(self) -> dict[str, float]:
        return {p: max(f.bound, 1.0) for p, f in self.programs.items()}

    @property
    def confidence(self) -> float:
        return self.fit.confidence

    def expected_per_hour(self, confidence: float | None = None) -> float:
        """False alerts an hour expected of activity like the held-out part's: each
        program's excursions at the same confidence, so all excursions times the tail."""
        c = self.confidence if confidence is None else confidence
        return self.excursions_per_hour * (1 - c) / 2

    def with_confidence(self, confidence: float) -> AlertBound:
        return AlertBound(self.fit.with_confidence(confidence), self.excursions_per_hour,
                          self.seconds, {p: f.with_confidence(confidence)
                                         for p, f in self.programs.items()})

    def to_json(self) -> dict:
        return {"fit": self.fit.to_json(), "excursions_per_hour": self.excursions_per_hour,
                "seconds": self.seconds, "bound": self.bound,
                "programs": {p: f.to_json() for p, f in sorted(self.programs.items())},
                "expected_false_alerts_per_hour": round(self.expected_per_hour(), 4)}

    @classmethod
    def from_json(cls, data) -> AlertBound:
        """Validated: ValueError naming what is wrong."""
        from sysdream.model.calibration import GaussianBound

        if not isinstance(data, dict) or not isinstance(data.get("fit"), dict):
            raise ValueError("alert calibration is not an object with a fit")
        fit = GaussianBound.from_json(data["fit"])
        rate, secs = data.get("excursions_per_hour"), data.get("seconds")
        for name, v in (("excursions_per_hour", rate), ("seconds", secs)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not math.isfinite(v) or v < 0:
                raise ValueError(f"alert calibration {name} is not a number >= 0")
        progs = data.get("programs", {})
        if not isinstance(progs, dict) or len(progs) > 10000:
            raise ValueError("alert calibration programs is not an object of fits")
        programs = {}
        for p, f in progs.items():
            if not isinstance(f, dict):
                raise ValueError(f"alert calibration of {p[:80]!r} is not a fit")
            programs[p] = GaussianBound.from_json(f)
            if programs[p].confidence != fit.confidence:
                raise ValueError("alert calibration fits of different confidences")
        return cls(fit, float(rate), float(secs), programs)


def default_confidence(excursions_per_hour: float, floor: float) -> float:
    """The confidence at which the expected false alerts stay at or under
    TARGET_PER_HOUR, never below `floor` (the window bound's); below 1."""
    if excursions_per_hour <= 0:
        return floor
    need = 1 - 2 * TARGET_PER_HOUR / excursions_per_hour
    return float(min(max(floor, need), 1 - 1e-9))


def fit_alert_bound(peaks: list[tuple[str, float]], seconds: float,
                    confidence: float | None, floor: float) -> AlertBound | None:
    """The alert bound from held-out (program, excursion peak) pairs over `seconds` of
    activity, at `confidence` (None: the default, see default_confidence): a fit of its
    own for each program with MIN_PEAKS excursions or more, one over the rest (over all
    of them where the rest are fewer than MIN_PEAKS); None with fewer than MIN_PEAKS in
    all, or where no normal fits them (KS MAX_KS or more: a program's own fit that far
    off gives its peaks back to the pool)."""
    from sysdream.model.calibration import fit

    peaks = [(prog, p) for prog, p in peaks if math.isfinite(p) and p > 0]
    if len(peaks) < MIN_PEAKS or seconds <= 0:
        return None
    rate = len(peaks) / (seconds / 3600)
    c = default_confidence(rate, floor) if confidence is None else confidence
    by: dict[str, list[float]] = {}
    for prog, p in peaks:
        by.setdefault(prog, []).append(p)
    own = {prog: fit(np.array(ps), c) for prog, ps in by.items()
           if len(ps) >= MIN_PEAKS and prog}
    own = {prog: f for prog, f in own.items() if f.ks_statistic < MAX_KS}
    rest = [p for prog, ps in by.items() if prog not in own for p in ps]
    pooled = fit(np.array(rest if len(rest) >= MIN_PEAKS else [p for _, p in peaks]), c)
    if pooled.ks_statistic >= MAX_KS:
        return None
    return AlertBound(pooled, round(rate, 3), round(seconds, 1), own)

